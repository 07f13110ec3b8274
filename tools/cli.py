"""The `ledgerlink` command."""

from __future__ import annotations

import argparse
import re
import sys
from typing import Sequence

from ledgerlink import __version__

SITE_RE = re.compile(r"[a-z0-9-]{1,32}")

# Commands whose arguments are handled by the module that implements them.
PASSTHROUGH = {
    "deploy": ("ledgerlink.tools.deploy", "compile the library for a board and copy it with mpremote"),
    "provision": ("ledgerlink.tools.provision", "make a board's key on the board and register it on the ledger"),
    "virtual-board": ("ledgerlink.tools.virtual_board", "serve a MicroPython raw REPL on a TCP port for mpremote"),
    "cluster": ("ledgerlink.ledger.cluster", "start a local ledger cluster (keys, genesis, node processes)"),
    "gateway": ("ledgerlink.gateway.main", "run a gateway from a config file"),
    "bench": ("ledgerlink.tools.bench", "per-operation crypto benchmark table"),
    "leakage": ("ledgerlink.tools.leakage", "dudect-style leakage check of secret-scalar operations"),
    "up": ("ledgerlink.tools.up", "run broker, ledger and gateway for real devices from a config file"),
    "admin": ("ledgerlink.tools.admin", "register, ban, show devices; firmware records; verified headers"),
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ledgerlink", description="ledgerlink device-security SDK")
    parser.add_argument("--version", action="version", version="ledgerlink " + __version__)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    demo = commands.add_parser(
        "demo", help="run the whole system on this machine (broker, 4 ledger nodes, gateway, devices)",
        description="Start an MQTT broker (mosquitto when installed, else the embedded one), a 4-node ledger, a gateway and simulated devices on "
                    "loopback; register the devices, open sessions, publish readings, verify receipts, ban one "
                    "device halfway; stop on Ctrl-C or after --duration. Exit 0 only when every check held.")
    demo.add_argument("--devices", type=int, default=20, metavar="N", help="simulated devices (default 20, at least 2)")
    demo.add_argument("--duration", type=float, default=30.0, metavar="S",
                      help="seconds of readings before stopping (default 30; 0: until Ctrl-C)")
    demo.add_argument("--site", default="demo", metavar="NAME", help="site name, [a-z0-9-]{1,32} (default demo)")
    demo.add_argument("--data", metavar="DIR",
                      help="keep keys, ledger, gateway store and logs in DIR (reused when it exists; "
                           "default: a temporary directory, removed after a successful run)")
    demo.add_argument("--interval", type=float, default=1.0, metavar="S",
                      help="seconds between readings of one device (default 1)")
    demo.add_argument("--broker", choices=("auto", "mosquitto", "embedded"), default=None,
                      help="MQTT broker: mosquitto, embedded (Python, nothing to install) or auto (default, or "
                           "$LEDGERLINK_BROKER): mosquitto when installed, else embedded")
    demo.add_argument("--scenario", choices=("site", "spinning"), default="site",
                      help="spinning: machines of a spinning line query each other and record their lots "
                           "(ledgerlink.tools.demo_spinning); default: the site with --devices devices")
    demo.add_argument("--library", action="store_true",
                      help="instead: the in-process example of the protocol library (no processes, no network)")
    demo.add_argument("--backend", choices=("portable", "cpython"), default=None,
                      help="--library: crypto backend (default: the fastest available; implies --library)")
    demo.add_argument("--readings", type=int, default=None, metavar="N",
                      help="--library: readings per mode in the example batch (default 8; implies --library)")

    for name, (module, text) in PASSTHROUGH.items():
        commands.add_parser(name, help=text, add_help=False)

    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in PASSTHROUGH:
        import importlib

        result = importlib.import_module(PASSTHROUGH[argv[0]][0]).main(argv[1:])
        return 0 if result is None else int(result)
    args = parser.parse_args(argv)
    if args.command == "demo":
        if args.library or args.backend is not None or args.readings is not None:
            from ledgerlink.tools.demo import run_demo

            readings = 8 if args.readings is None else args.readings
            if readings < 1:
                parser.error("--readings must be at least 1")
            return run_demo(backend=args.backend, readings=readings)
        if args.scenario == "spinning":
            from ledgerlink.tools.demo_spinning import run_spinning

            return run_spinning(site_name=args.site, data=args.data, broker=args.broker)
        if args.devices < 2:
            parser.error("--devices must be at least 2 (one of them is banned)")
        if args.duration < 0:
            parser.error("--duration must not be negative")
        if args.interval <= 0:
            parser.error("--interval must be positive")
        if not SITE_RE.fullmatch(args.site):
            parser.error("--site must match [a-z0-9-]{1,32}")
        from ledgerlink.tools.demo import run_live

        try:
            return run_live(devices=args.devices, duration=args.duration, site=args.site, data=args.data,
                            interval=args.interval, broker=args.broker)
        except KeyboardInterrupt:                # before anything was started
            print("interrupted", file=sys.stderr)
            return 130
    parser.print_help()
    return 2


if __name__ == "__main__":
    sys.exit(main())
