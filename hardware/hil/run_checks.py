"""Hardware-in-the-loop checks run through mpremote on a board with ledgerlink installed (tools/deploy.py).

``python3 hardware/hil/run_checks.py --port PORT --board NAME --out DIR``

On the device, in separate mpremote execs: (1) the port, MicroPython version and free heap; (2) a few
Wycheproof ECDSA P-256/SHA-256 (P1363) verify cases and (3) AES-CCM open cases, sent as arguments in the
program text from ../shared/vectors, each compared with the expected result; (4) key generation, ECDSA
sign and verify, and (5) ECQV issue, reconstruct and public-key extraction, each timed with
``time.ticks_ms`` (ms; interpreter fuel is not visible through mpremote) with ``gc.mem_free`` after.
Writes ``<board>.txt`` (a table) and ``<board>.json`` to ``--out``. Exit 0 when every vector passed,
1 when one failed, 3 when the board did not answer.

On the WASI build behind tools/virtual_board.py, ``gc.collect()`` is not called (that build's collector
corrupts memory); on boards it runs before each measurement.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]
VECTORS = PROJECT_ROOT.parent / "shared" / "vectors"
MARK = "HIL:"

DEVICE_PRELUDE = """\
import sys, gc, time, json
WASI = getattr(sys.implementation, '_build', '') == 'wasi'
def collect():
    if not WASI:
        gc.collect()
def free():
    collect()
    return gc.mem_free()
def report(obj):
    print('HIL:' + json.dumps(obj))
def rng(n):
    try:
        return host_urandom(n)
    except NameError:
        import os
        return os.urandom(n)
"""

INFO = DEVICE_PRELUDE + """\
report({'platform': sys.platform, 'version': '.'.join(str(x) for x in sys.implementation.version[:3]),
        'machine': getattr(sys.implementation, '_machine', ''), 'mem_free': free(), 'wasi': WASI})
"""

ECDSA_VECTORS = DEVICE_PRELUDE + """\
from ledgerlink.core import ecdsa
from ledgerlink.core.errors import LedgerlinkError
out = []
for pub, cases in json.loads(%r):
    pub = bytes.fromhex(pub)
    for tc, msg, sig, expect in cases:
        try:
            ok = ecdsa.verify(pub, bytes.fromhex(msg), bytes.fromhex(sig))
        except LedgerlinkError:
            ok = False
        out.append([tc, ok == expect])
        collect()
report({'ecdsa': out, 'mem_free': free()})
"""

CCM_VECTORS = DEVICE_PRELUDE + """\
from ledgerlink.core import ccm
from ledgerlink.core.errors import LedgerlinkError
out = []
for tc, key, iv, aad, msg, ct, tag, expect in json.loads(%r):
    key, iv, aad = bytes.fromhex(key), bytes.fromhex(iv), bytes.fromhex(aad)
    try:
        pt = ccm.open(key, iv, bytes.fromhex(ct + tag), aad, len(tag) // 2)
        ok = pt == bytes.fromhex(msg) and ccm.seal(key, iv, pt, aad, len(tag) // 2) == bytes.fromhex(ct + tag)
    except LedgerlinkError:
        ok = False
    out.append([tc, ok == expect])
report({'ccm': out, 'mem_free': free()})
"""

ECDSA_TIMINGS = DEVICE_PRELUDE + """\
from ledgerlink.core import ecdsa
times = {'keygen': [], 'sign': [], 'verify': []}
low = free()
for i in range(%d):
    collect()
    t = time.ticks_ms(); priv = ecdsa.generate_private_key(rng); pub = ecdsa.public_key(priv)
    times['keygen'].append(time.ticks_diff(time.ticks_ms(), t))
    collect()
    t = time.ticks_ms(); sig = ecdsa.sign(priv, b'ledgerlink hil %%d' %% i)
    times['sign'].append(time.ticks_diff(time.ticks_ms(), t))
    collect()
    t = time.ticks_ms(); ok = ecdsa.verify(pub, b'ledgerlink hil %%d' %% i, sig)
    times['verify'].append(time.ticks_diff(time.ticks_ms(), t))
    if not ok:
        raise ValueError('own signature did not verify')
    low = min(low, gc.mem_free())
report({'times': times, 'mem_free': free(), 'mem_low': low})
"""

ECQV_TIMINGS = DEVICE_PRELUDE + """\
from ledgerlink.core import ecdsa, ecqv
ca_priv = ecdsa.generate_private_key(rng)
ca_pub = ecdsa.public_key(ca_priv)
times = {'ecqv_issue': [], 'ecqv_reconstruct': [], 'ecqv_public_key': []}
low = free()
for i in range(%d):
    collect()
    k_u, r_u = ecqv.create_request(rng)
    t = time.ticks_ms(); cert, r = ecqv.issue(r_u, ca_priv, bytes([i + 1]), b'hil-ca', b'hil-device', 0, 86400, rng=rng)
    times['ecqv_issue'].append(time.ticks_diff(time.ticks_ms(), t))
    collect()
    t = time.ticks_ms(); d_u, q_u = ecqv.reconstruct(k_u, cert, r, ca_pub)
    times['ecqv_reconstruct'].append(time.ticks_diff(time.ticks_ms(), t))
    collect()
    t = time.ticks_ms(); q = ecqv.public_key(cert, ca_pub)
    times['ecqv_public_key'].append(time.ticks_diff(time.ticks_ms(), t))
    if q != q_u:
        raise ValueError('extracted key differs from reconstructed key')
    low = min(low, gc.mem_free())
report({'times': times, 'mem_free': free(), 'mem_low': low})
"""


class BoardError(Exception):
    """The board did not answer or a device program raised."""


def load(relative: str) -> dict:
    path = VECTORS / relative
    if not path.is_file():
        raise FileNotFoundError("test vectors missing: %s (expected ../shared/vectors beside the project)" % path)
    return json.loads(path.read_text())


def ecdsa_cases(count: int) -> list:
    """[[pub_hex, [[tcId, msg, sig, expect_valid], ...]]]: the first ``count`` valid and invalid cases."""
    data = load("wycheproof/ecdsa_secp256r1_sha256_p1363_test.json")
    groups = []
    valid = invalid = 0
    for group in data["testGroups"]:
        picked = []
        for t in group["tests"]:
            if t["result"] == "valid" and valid < count:
                valid += 1
            elif t["result"] == "invalid" and invalid < count:
                invalid += 1
            else:
                continue
            picked.append([t["tcId"], t["msg"], t["sig"], t["result"] == "valid"])
        if picked:
            groups.append([group["publicKey"]["uncompressed"], picked])
        if valid >= count and invalid >= count:
            break
    return groups


def ccm_cases(count: int) -> list:
    """[[tcId, key, iv, aad, msg, ct, tag, expect_valid]] from groups our CCM supports (nonce 7..13 bytes)."""
    data = load("wycheproof/aes_ccm_test.json")
    out = []
    valid = invalid = 0
    for group in data["testGroups"]:
        if not 56 <= group["ivSize"] <= 104 or group["tagSize"] % 16:
            continue
        for t in group["tests"]:
            if t["result"] == "valid" and valid < count:
                valid += 1
            elif t["result"] == "invalid" and invalid < count:
                invalid += 1
            else:
                continue
            out.append([t["tcId"], t["key"], t["iv"], t["aad"], t["msg"], t["ct"], t["tag"], t["result"] == "valid"])
    return out


def run_on_board(port: str, code: str, timeout: float) -> dict:
    """Run one program with ``mpremote exec``; return the JSON it reported."""
    cmd = [sys.executable, "-m", "mpremote", "connect", port, "exec", code]
    try:
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise BoardError("no answer from %s within %ds" % (port, timeout)) from None
    for line in result.stdout.splitlines():
        if line.startswith(MARK):
            return json.loads(line[len(MARK):])
    tail = (result.stderr.strip() or result.stdout.strip()).splitlines()
    raise BoardError(tail[-1] if tail else "mpremote exit code %d" % result.returncode)


def summarize(samples: list[int]) -> dict:
    ordered = sorted(samples)
    return {"n": len(ordered), "min_ms": ordered[0], "median_ms": ordered[len(ordered) // 2],
            "max_ms": ordered[-1]}


def run_checks(port: str, board: str, out_dir: Path, cases: int = 3, repeat: int = 3,
               timeout: float = 600.0) -> dict:
    """Run every check on the board; write <board>.txt and <board>.json to ``out_dir``; return the report."""
    started = time.time()
    info = run_on_board(port, INFO, timeout)
    ecdsa = run_on_board(port, ECDSA_VECTORS % json.dumps(ecdsa_cases(cases)), timeout)
    ccm = run_on_board(port, CCM_VECTORS % json.dumps(ccm_cases(cases)), timeout)
    sig = run_on_board(port, ECDSA_TIMINGS % repeat, timeout)
    ecqv = run_on_board(port, ECQV_TIMINGS % repeat, timeout)
    vectors = {
        "ecdsa": {"total": len(ecdsa["ecdsa"]), "failed": [tc for tc, ok in ecdsa["ecdsa"] if not ok]},
        "aes_ccm": {"total": len(ccm["ccm"]), "failed": [tc for tc, ok in ccm["ccm"] if not ok]},
    }
    timings = {name: summarize(v) for part in (sig, ecqv) for name, v in part["times"].items()}
    report = {
        "board": board, "port": port, "device": info,
        "vectors": vectors, "timings": timings,
        "heap": {"free_at_start": info["mem_free"], "free_after_vectors": ecdsa["mem_free"],
                 "lowest_during_ecdsa": sig["mem_low"], "lowest_during_ecqv": ecqv["mem_low"]},
        "passed": not vectors["ecdsa"]["failed"] and not vectors["aes_ccm"]["failed"],
        "wall_s": round(time.time() - started, 1),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / (board + ".json")).write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    (out_dir / (board + ".txt")).write_text(render(report))
    return report


def render(report: dict) -> str:
    d = report["device"]
    lines = ["ledgerlink HIL report: %s on %s (MicroPython %s, %s)" % (report["board"], report["port"],
                                                                    d["version"], d["platform"]), ""]
    lines.append("%-18s %6s %6s" % ("vectors", "total", "failed"))
    for name, v in report["vectors"].items():
        lines.append("%-18s %6d %6d%s" % (name, v["total"], len(v["failed"]),
                                          "  tcId " + ",".join(map(str, v["failed"])) if v["failed"] else ""))
    lines += ["", "%-18s %4s %8s %8s %8s" % ("operation", "n", "min ms", "med ms", "max ms")]
    for name, t in report["timings"].items():
        lines.append("%-18s %4d %8d %8d %8d" % (name, t["n"], t["min_ms"], t["median_ms"], t["max_ms"]))
    lines += ["", "%-26s %10s" % ("heap", "bytes free")]
    for name, value in report["heap"].items():
        lines.append("%-26s %10d" % (name, value))
    lines += ["", "result: %s" % ("PASS" if report["passed"] else "FAIL")]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run the ledgerlink HIL checks on a board through mpremote.")
    parser.add_argument("--port", required=True, help="serial port or socket://127.0.0.1:PORT")
    parser.add_argument("--board", required=True, help="board name for the report files")
    parser.add_argument("--out", type=Path, default=Path("hil-reports"))
    parser.add_argument("--cases", type=int, default=3, help="valid and invalid vectors per algorithm")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per operation")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per device program")
    args = parser.parse_args(argv)
    try:
        report = run_checks(args.port, args.board, args.out, args.cases, args.repeat, args.timeout)
    except BoardError as exc:
        print("run_checks: error: %s: deploy first (tools/deploy.py) and check the port" % exc, file=sys.stderr)
        return 3
    sys.stdout.write(render(report))
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
