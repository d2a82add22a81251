"""The foundation layer: declarations every later stage may import and that import no
later stage — the device catalogue and target facts, who ran a result, tool versions,
the runner interface with the runtime registry, and per-layer traces. The layers above
it are listed in README.md ("Layout") and checked by tests/test_layers.py."""
