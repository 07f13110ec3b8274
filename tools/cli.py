"""The `ledgerlink` command."""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from ledgerlink import __version__


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ledgerlink", description="ledgerlink device-security SDK")
    parser.add_argument("--version", action="version", version="ledgerlink " + __version__)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    demo = commands.add_parser("demo", help="run the end-to-end example of the protocol library")
    demo.add_argument("--backend", choices=("portable", "cpython"), default=None,
                      help="crypto backend (default: the fastest available)")
    demo.add_argument("--readings", type=int, default=8, metavar="N",
                      help="readings per mode in the example batch (default 8)")

    args = parser.parse_args(argv)
    if args.command == "demo":
        from ledgerlink.tools.demo import run_demo

        if args.readings < 1:
            parser.error("--readings must be at least 1")
        return run_demo(backend=args.backend, readings=args.readings)
    parser.print_help()
    return 2


if __name__ == "__main__":
    sys.exit(main())
