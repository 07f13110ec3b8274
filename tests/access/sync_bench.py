"""How long ``ledgerlink up`` takes to start beside an external mosquitto (dynamic security plugin) that holds
a site's accounts: the first start (every account made there) and a restart with the accounts unchanged,
each with the part spent on the broker's accounts (``SiteAccess.sync_external``).

    python3 tests/access/sync_bench.py --accounts 300 [--rounds 2] [--against /tmp/ll-base]

``--against PATH`` runs the same measurement under another checkout of the project at PATH (e.g.
``git worktree add /tmp/ll-base REV``) and under this one, alternating which goes first, and prints each
run, the medians and B / A (B: this checkout). A start that fails (a broker that did not answer every
command in time) is printed with the time it took and the reason. Prints numbers; it checks nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import pwd
import re
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ADMIN = {"username": "bench-ops", "password": "bench-admin-password-0123456789"}
ROWS = ("first start", "first sync", "restart", "restart sync")


def _external_mosquitto(folder: Path) -> tuple[subprocess.Popen, int, Path]:
    from ledgerlink.tools.broker_access import anonymous_accepted, find_dynsec_plugin, hash_password
    from ledgerlink.tools.stack import find_mosquitto, free_port

    folder.mkdir(parents=True)
    h = hash_password(ADMIN["password"])
    (folder / "dynsec.json").write_text(json.dumps({
        "defaultACLAccess": {"publishClientSend": False, "publishClientReceive": True, "subscribe": False,
                             "unsubscribe": True},
        "clients": [{"username": ADMIN["username"], "password": h["hash"], "salt": h["salt"],
                     "iterations": h["iterations"], "roles": [{"rolename": "admin"}]}],
        "groups": [],
        "roles": [{"rolename": "admin", "acls": [
            {"acltype": kind, "topic": "$CONTROL/dynamic-security/#", "allow": True}
            for kind in ("publishClientSend", "publishClientReceive", "subscribePattern")]}]}))
    port = free_port()
    (folder / "mosquitto.conf").write_text(
        "listener %d 127.0.0.1\nallow_anonymous false\npersistence false\nuser %s\nplugin %s\n"
        "plugin_opt_config_file %s\n" % (port, pwd.getpwuid(os.geteuid()).pw_name, find_dynsec_plugin(),
                                          folder / "dynsec.json"))
    proc = subprocess.Popen([find_mosquitto(), "-c", str(folder / "mosquitto.conf")], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    login = folder / "admin.json"
    login.write_text(json.dumps(ADMIN))
    os.chmod(login, 0o600)
    deadline = time.monotonic() + 10
    while True:
        try:
            anonymous_accepted("127.0.0.1", port)
            return proc, port, login
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise SystemExit("the external mosquitto did not start")
            time.sleep(0.05)


def measure(accounts: int) -> dict[str, float]:
    """Seconds of each row of ``ROWS`` for one site with ``accounts`` device accounts."""
    from ledgerlink.tools import up
    from ledgerlink.tools.broker_access import SiteAccess, device_username

    tmp = Path(tempfile.mkdtemp(prefix="ll-sync-bench-"))
    proc, port, login = _external_mosquitto(tmp / "external")
    spent: list[float] = []
    real = SiteAccess.sync_external

    def timed(self, *args, **kwargs):
        t0 = time.perf_counter()
        try:
            return real(self, *args, **kwargs)
        finally:
            spent.append(time.perf_counter() - t0)

    SiteAccess.sync_external = timed
    try:
        path = tmp / "up.json"
        path.write_text(json.dumps({"data_dir": "site", "site": "bench", "ledger": {"nodes": 1},
                                    "broker": {"external": "127.0.0.1:%d" % port, "admin_login": str(login)}}))
        cfg = up.load_config(path)
        up.preflight(cfg)
        up.make_ledger(cfg)
        access = SiteAccess(cfg.data_dir / "broker", "bench")
        devices = [secrets.token_bytes(16) for _ in range(accounts)]
        access.add_many([(device_username(d), "device", d, None) for d in devices])
        out: dict[str, tuple[float, str]] = {}
        for row in ("first", "restart"):
            stack = up._make_stack_class()(cfg, lambda line: None)
            t0 = time.perf_counter()
            failed = ""
            try:
                stack.start()
            except Exception as exc:  # noqa: BLE001 - printed with the time it took
                failed = str(exc).split(":")[0] + ": " + str(exc).split("(")[-1].split(")")[0]
            finally:
                took = time.perf_counter() - t0
                stack.stop()
            out[row + (" start" if row == "first" else "")] = (took, failed)
            out[row + " sync"] = (spent[-1], failed)
        return out
    finally:
        SiteAccess.sync_external = real
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)


def compare(against: str, rounds: int, accounts: int) -> int:
    from ledgerlink.gateway.bench import checkout_path

    root = Path(against).resolve()
    tmp = Path(tempfile.mkdtemp(prefix="ll-sync-ab-"))
    try:
        env_a = dict(os.environ, PYTHONPATH=checkout_path(root, tmp / "a"))
        got: dict[str, dict[str, list[float]]] = {"A": {r: [] for r in ROWS}, "B": {r: [] for r in ROWS}}
        print("A: %s\nB: %s\n%d device accounts" % (root, Path(__file__).resolve().parents[2], accounts), flush=True)
        for r in range(rounds):
            for label in ("A", "B") if r % 2 == 0 else ("B", "A"):
                run = subprocess.run([sys.executable, __file__, "--accounts", str(accounts)], capture_output=True,
                                     text=True, env=env_a if label == "A" else dict(os.environ))
                if run.returncode != 0:
                    print(run.stdout[-2000:], run.stderr[-3000:], file=sys.stderr)
                    return 1
                for row in ROWS:
                    got[label][row].append(float(re.search(r"^%s: ([0-9.]+) s" % row, run.stdout, re.M).group(1)))
                print("round %d, %s:\n  %s" % (r + 1, label, "\n  ".join(
                    line for line in run.stdout.splitlines() if line.split(":")[0] in ROWS)), flush=True)
        print("\n%-14s %9s %9s %7s" % ("median", "A", "B", "B / A"))
        for row in ROWS:
            a, b = statistics.median(got["A"][row]), statistics.median(got["B"][row])
            print("%-14s %7.2f s %7.2f s %7.2f" % (row, a, b, b / a))
        return 0
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--accounts", type=int, default=300, help="device accounts of the site")
    p.add_argument("--rounds", type=int, default=2, help="runs under each checkout with --against")
    p.add_argument("--against", metavar="PATH", help="another checkout of the project, measured as A")
    args = p.parse_args()
    if args.against:
        return compare(args.against, args.rounds, args.accounts)
    out = measure(args.accounts)
    for row in ROWS:
        print("%s: %.2f s%s" % (row, out[row][0], " (failed: %s)" % out[row][1] if out[row][1] else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
