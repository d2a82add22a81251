"""One module per CLI subcommand (asv's layout): the CLI parses arguments and calls a
plain function here, which tests call directly."""
