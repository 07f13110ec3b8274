"""What a device (and the gateway) pays to check one certified ledger header, for validator sets of
N = 4 .. 100: today's 2f+1-vote certificate (2f+1 ES256 verifications) against a threshold certificate
(one FROST(P-256, SHA-256) verification, docs/protocol.md "Threshold header certificates").

Inputs per N: N validator keys and a 2f+1-of-N FROST group key (trusted dealer, seeded), a header naming
each set, a vote certificate with exactly 2f+1 votes and ``SIGNATURES`` threshold certificates (views 0,
1, ...) made by 2f+1 shares. Checks, each ``ledgerlink.protocol.spv`` as a device runs it on the CBOR it
receives:
- ``ecdsa``: ``verify_certified_header(votes, chain, keys)`` (``spv.MAX_VALIDATORS`` raised to N);
- ``frost``: ``verify_threshold_header(cert, chain, anchor, group_key)``, the device keeping the anchor
  ``validators_hash(keys, group_key)`` (32 bytes) instead of the key list;
- ``frost+keys``: the same with the key list, hashed at each check (grows with N by the hashing).
The FROST figures are the mean over the threshold certificates (the verification is variable-time in
the public scalars, so each signature costs a little differently).

Columns: QEMU board instructions (Cortex-M3, 190 KB heap, library in ROMFS, ``-icount shift=0``; after a
warm-up check), board32 peak live heap of the check above the inputs (ROMFS, collector on, sampled every
KB; tools/bench.py), and CPython gateway microseconds per check (default backend, best of 5).

Usage: ``python3 -m ledgerlink.tools.header_check [--sizes 4,7,...] [--no-qemu] [--json FILE]``, also
``python3 -m ledgerlink.tools.bench --header-check``.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import timeit
from pathlib import Path
from typing import Any

from ledgerlink.core import cbor, frost
from ledgerlink.core.backend import get_backend
from ledgerlink.protocol import spv

SIZES = (4, 7, 10, 16, 31, 64, 100)
CHAIN = "plant-bench"
SIGNATURES = 8
CHECKS = ("ecdsa", "frost+keys", "frost")  # in this order: "frost" runs after the key list is dropped
QEMU_HEAP_KB = 190


class Site:
    """The inputs of the checks for one validator-set size ``n`` (deterministic in ``seed``)."""

    def __init__(self, n: int, seed: int = 1) -> None:
        gen = random.Random(seed * 1000 + n)
        rng = lambda size: gen.randbytes(size)  # noqa: E731
        crypto = get_backend()
        self.n = n
        self.quorum = spv.quorum(n)
        privs = [crypto.generate_private_key(rng) for _ in range(n)]
        self.keys = [crypto.public_key(p) for p in privs]
        shares, _, self.group_key = frost.trusted_dealer_keygen(None, n, self.quorum, rng)
        self.anchor = spv.validators_hash(self.keys, self.group_key)

        header = [CHAIN, 9, bytes(32), 1_700_000_000_000, bytes([1]) * 32, bytes([2]) * 32,
                  spv.validators_hash(self.keys)]
        header_hash = spv.Header(header).hash
        msg = spv.commit_sign_bytes(CHAIN, 9, 0, header_hash)
        votes = [[i, crypto.sign(privs[i], msg)] for i in range(self.quorum)]
        self.votes = cbor.dumps([header, [9, 0, header_hash, votes]])

        header = header[:6] + [self.anchor]
        header_hash = spv.Header(header).hash
        signers = list(range(1, self.quorum + 1))
        self.threshold = []
        for view in range(SIGNATURES):
            msg = spv.commit_sign_bytes(CHAIN, 9, view, header_hash)
            nonces, commitments = {}, []
            for i in signers:
                nonces[i], commitment = frost.commit(shares[i], rng, index=i)
                commitments.append(commitment)
            z = {i: frost.sign(i, shares[i], self.group_key, nonces[i], msg, commitments) for i in signers}
            signature = frost.aggregate(self.group_key, commitments, msg, z)
            self.threshold.append(cbor.dumps([header, [view, signature]]))

    def host_check(self) -> None:
        """Every input checks on the host, as it must on the board."""
        if self.n <= spv.MAX_VALIDATORS:
            spv.verify_certified_header(self.votes, CHAIN, self.keys)
        for cert in self.threshold:
            spv.verify_threshold_header(cert, CHAIN, self.anchor, self.group_key)

    def statements(self) -> dict[str, list[str]]:
        """{check: [board statement per input]}; the board's globals come from ``board_inputs``."""
        return {
            "ecdsa": ["spv.verify_certified_header(votes, CHAIN, keys)"],
            "frost": ["spv.verify_threshold_header(thr[%d], CHAIN, anchor, group_key)" % k for k in range(SIGNATURES)],
            "frost+keys": ["spv.verify_threshold_header(thr[%d], CHAIN, keys, group_key)" % k
                           for k in range(SIGNATURES)],
        }

    def blobs(self) -> dict[str, bytes]:
        return {"keys_blob": b"".join(self.keys), "votes": self.votes, "anchor": self.anchor,
                "group_key": self.group_key, "thr_blob": b"".join(self.threshold)}


BOARD_PRELUDE = """
import gc, time, json
from ledgerlink.protocol import spv
from ledgerlink.core import ecdsa
if spv.MAX_VALIDATORS < %(n)d:
    spv.MAX_VALIDATORS = %(n)d
CHAIN = %(chain)r
"""

BOARD_INPUTS = """
keys = [bytes(keys_blob[i * 65:(i + 1) * 65]) for i in range(%(n)d)]
keys_blob = None
votes = bytes(votes)
anchor = bytes(anchor)
group_key = bytes(group_key)
thr = []
_at = 0
for _len in %(lens)r:
    thr.append(bytes(thr_blob[_at:_at + _len]))
    _at += _len
thr_blob = None
gc.collect()
"""

# the device of "frost" keeps only the anchor and group key: the key list and vote certificate are dropped
# first, so the board's heap (and its collector's work) is the same for every N
DROP_KEYS = """
keys = None
votes = None
gc.collect()
"""

# the first check imports frost and builds nothing else lazily; a single vote verification warms ES256
WARM_UP = """
spv.verify_threshold_header(thr[0], CHAIN, anchor, group_key)
ecdsa.verify(keys[0], b'warm', bytes(64))
gc.collect()
"""

MEASURE = """
gc.collect()
_t = time.ticks_us()
%s
_dt = time.ticks_diff(time.ticks_us(), _t)
print('ICOUNT', _dt)
"""


def _inputs_code(site: Site) -> str:
    return BOARD_INPUTS % {"n": site.n, "lens": [len(c) for c in site.threshold]}


def qemu_instructions(sites: list[Site], checks: tuple[str, ...] = CHECKS) -> dict[int, dict[str, float]]:
    """{n: {check: QEMU instructions per check (mean over its inputs)}} on one board, soft-reset per n."""
    from ledgerlink.tools.qemu_board import QemuBoard, library_image

    out: dict[int, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="ledgerlink-header-check-") as tmp:
        image = library_image(Path(tmp) / "lib.romfs")
        with QemuBoard(image, heap_kb=QEMU_HEAP_KB, icount=0) as board:
            for site in sites:
                board.soft_reset()
                board.exec(BOARD_PRELUDE % {"n": site.n, "chain": CHAIN})
                for name, data in site.blobs().items():
                    board.put(name, data)
                board.exec(_inputs_code(site))
                board.exec(WARM_UP, timeout=600)
                row = {}
                for check in CHECKS:
                    if check not in checks:
                        continue
                    if check == "frost":
                        board.exec(DROP_KEYS)
                    counts = []
                    for stmt in site.statements()[check]:
                        text = board.exec(MEASURE % stmt, timeout=1800)
                        counts.append(int(text.split("ICOUNT")[-1]) * 1000)
                    row[check] = sum(counts) / len(counts)
                    row[check + " each"] = counts
                out[site.n] = row
    return out


BOARD32_PEAK = """
gc.collect()
_base = gc.mem_alloc()
gc.threshold(1024)
gc.peak_live(1)
%s
gc.collect()
_peaks.append(gc.peak_live()[0] - _base)
"""


def board32_peaks(sites: list[Site], checks: tuple[str, ...] = ("ecdsa", "frost")) -> dict[int, dict[str, int]]:
    """{n: {check: highest peak live heap in bytes over its inputs above the inputs}} on board32 (ROMFS)."""
    from ledgerlink.tools.board_runtime import Board

    out: dict[int, dict[str, int]] = {}
    with Board("romfs") as board:
        for site in sites:
            setup = BOARD_PRELUDE % {"n": site.n, "chain": CHAIN}
            setup += "".join("%s = bytes.fromhex(%r)\n" % (name, data.hex()) for name, data in site.blobs().items())
            setup += _inputs_code(site) + WARM_UP + "_peaks = []\n"
            row = {}
            for check in checks:
                code = setup + (DROP_KEYS if check == "frost" else "")
                code += "".join(BOARD32_PEAK % stmt for stmt in site.statements()[check])
                result = board.run(code + "print(json.dumps(max(_peaks)))\n", board_heap=256 * 1024)
                row[check] = int(result.stdout.split()[-1])
            out[site.n] = row
    return out


def gateway_microseconds(sites: list[Site], checks: tuple[str, ...] = CHECKS) -> dict[int, dict[str, float]]:
    """{n: {check: CPython microseconds per check}}: default backend, best of 5 repeats."""
    saved = spv.MAX_VALIDATORS
    out: dict[int, dict[str, float]] = {}
    try:
        for site in sites:
            spv.MAX_VALIDATORS = max(saved, site.n)
            calls = {
                "ecdsa": lambda: spv.verify_certified_header(site.votes, CHAIN, site.keys),
                "frost": lambda: [spv.verify_threshold_header(c, CHAIN, site.anchor, site.group_key)
                                  for c in site.threshold],
                "frost+keys": lambda: [spv.verify_threshold_header(c, CHAIN, site.keys, site.group_key)
                                       for c in site.threshold],
            }
            per_call = {"ecdsa": 1, "frost": SIGNATURES, "frost+keys": SIGNATURES}
            row = {}
            for check in checks:
                calls[check]()
                timer = timeit.Timer(calls[check])
                number = max(1, int(0.05 / max(timer.timeit(1), 1e-6)))
                row[check] = min(timer.repeat(5, number)) / number / per_call[check] * 1e6
            out[site.n] = row
    finally:
        spv.MAX_VALIDATORS = saved
    return out


def measure(sizes: tuple[int, ...] = SIZES, checks: tuple[str, ...] = CHECKS, qemu: bool = True,
            board32: bool = True) -> dict[str, Any]:
    """Every figure of the table for ``sizes`` and ``checks`` (JSON-ready)."""
    sites = [Site(n) for n in sizes]
    for site in sites:
        site.host_check()
    result: dict[str, Any] = {"sizes": list(sizes), "quorum": {s.n: s.quorum for s in sites},
                              "signatures": SIGNATURES, "gateway_us": gateway_microseconds(sites, checks)}
    if board32:
        result["board32_peak_bytes"] = board32_peaks(sites, tuple(c for c in ("ecdsa", "frost") if c in checks))
    if qemu:
        result["qemu_instructions"] = qemu_instructions(sites, checks)
    return result


def _fmt(value: float | None, scale: float = 1.0, digits: int = 0) -> str:
    return "-" if value is None else "{:,.{}f}".format(value / scale, digits)


def format_table(result: dict[str, Any]) -> list[str]:
    qemu = result.get("qemu_instructions", {})
    peaks = result.get("board32_peak_bytes", {})
    gateway = result["gateway_us"]
    lines = ["Device header check: 2f+1 ES256 votes against one FROST(P-256, SHA-256) signature",
             "%5s %4s | %11s %11s %13s %11s %7s | %10s %10s | %9s %9s %9s" % (
                 "N", "2f+1", "QEMU ecdsa", "QEMU frost", "frost range", "frost+keys", "ratio", "heap ecdsa",
                 "heap frost", "gw ecdsa", "gw frost", "gw f+keys"),
             "%5s %4s | %11s %11s %13s %11s %7s | %10s %10s | %9s %9s %9s" % (
                 "", "", "M instr", "M instr", "M instr", "M instr", "e/f", "B", "B", "us", "us", "us")]
    for n in result["sizes"]:
        q, p, g = qemu.get(n, {}), peaks.get(n, {}), gateway[n]
        ratio = q["ecdsa"] / q["frost"] if "ecdsa" in q and "frost" in q else None
        each = q.get("frost each")
        spread = "%.1f-%.1f" % (min(each) / 1e6, max(each) / 1e6) if each else "-"
        lines.append("%5d %4d | %11s %11s %13s %11s %7s | %10s %10s | %9s %9s %9s" % (
            n, result["quorum"][n], _fmt(q.get("ecdsa"), 1e6, 1), _fmt(q.get("frost"), 1e6, 1), spread,
            _fmt(q.get("frost+keys"), 1e6, 1), _fmt(ratio, 1, 1), _fmt(p.get("ecdsa")), _fmt(p.get("frost")),
            _fmt(g.get("ecdsa")), _fmt(g.get("frost")), _fmt(g.get("frost+keys"))))
    lines.append("frost: the device keeps the 32-byte validators-hash anchor; frost+keys hashes the key list "
                 "at each check. FROST figures are means over %d signatures (range: the least and most of them; the "
                 "verification is variable-time in its public scalars)." % result["signatures"])
    if qemu:
        lines.append("QEMU: mps2-an385 Cortex-M3, %d KB heap, library in ROMFS, -icount shift=0 (1 instruction "
                     "= 1 ns; resolution 1,000). heap: board32 peak live above the inputs, ROMFS, collector "
                     "every KB. gw: CPython, %s backend, best of 5." % (QEMU_HEAP_KB, get_backend().name))
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m ledgerlink.tools.header_check",
                                     description="Device and gateway cost of one header check, vote "
                                                 "certificate against threshold certificate, per validator count.")
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)), help="validator counts (default %(default)s)")
    parser.add_argument("--checks", default=",".join(CHECKS), help="checks to run (default %(default)s)")
    parser.add_argument("--no-qemu", action="store_true", help="skip the QEMU board (no instruction counts)")
    parser.add_argument("--no-board32", action="store_true", help="skip board32 (no peak heap)")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON to FILE")
    args = parser.parse_args(argv)
    sizes = tuple(int(s) for s in args.sizes.split(",") if s.strip())
    if not sizes or min(sizes) < 4 or max(sizes) > frost.MAX_PARTICIPANTS:
        parser.error("sizes must be between 4 and %d" % frost.MAX_PARTICIPANTS)
    checks = tuple(c for c in args.checks.split(",") if c)
    if not checks or any(c not in CHECKS for c in checks):
        parser.error("checks are among %s" % ",".join(CHECKS))
    result = measure(sizes, checks, qemu=not args.no_qemu, board32=not args.no_board32)
    print("\n".join(format_table(result)))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(result, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
