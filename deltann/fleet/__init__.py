"""Runs: the device catalogue, board actors pinned by Ray custom resources, and the
driver that streams their Arrow tables into the store."""
