"""``ray submit ray_cluster.yaml run.py -- --study studies/conversions.toml [--out DIR]``

A thin entry for the cluster launcher: joins the running cluster (address "auto", or
$RAY_ADDRESS) and runs the study through the same code as ``deltann run``. The device
catalogue is ``--devices``, else $DELTANN_DEVICES, else ``cluster/devices.toml`` beside this
file: ``ray submit`` copies run.py to the head's home, where the launcher file-mounts
``~/cluster`` (an installed deltann does not ship the catalogue)."""

from __future__ import annotations

import os
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    import argparse

    from deltann.cli import main as cli_main

    parser = argparse.ArgumentParser(prog="run.py", description=__doc__.splitlines()[0])
    parser.add_argument("--study", required=True, help="study file (TOML)")
    parser.add_argument("--out", help="results folder (default: results/<study name>)")
    parser.add_argument("--address", default=os.environ.get("RAY_ADDRESS", "auto"), help="Ray cluster (default: auto)")
    parser.add_argument("--devices", help="device catalogue (default: $DELTANN_DEVICES, else cluster/devices.toml "
                                          "beside run.py)")
    parser.add_argument("--quiet", action="store_true")
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv[1:] if argv[:1] == ["--"] else argv)  # `ray submit ... run.py -- ...`
    beside = Path(__file__).resolve().parent / "cluster" / "devices.toml"
    devices = args.devices or os.environ.get("DELTANN_DEVICES") or (str(beside) if beside.exists() else None)
    if devices:
        os.environ["DELTANN_DEVICES"] = devices
    cli_args = ["run", args.study, "--address", args.address] + (["--out", args.out] if args.out else [])
    return cli_main(cli_args + (["--quiet"] if args.quiet else []))


if __name__ == "__main__":
    sys.exit(main())
