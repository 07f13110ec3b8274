"""What one receipt check costs a board when the header carries 2f+1 votes and when it carries one FROST
threshold signature (docs/protocol.md "Threshold header certificates"), on the same ledger.

A 4-node ledger with threshold headers (``LocalCluster(threshold=True)``, any ``--nodes`` 3f+1) anchors a
batch with the gateway's key; the node's proof of the anchor transaction carries the block's header twice:
with its commit votes (``certified_header``) and with its threshold certificate (``threshold_header``). The
two receipts differ only in that certificate. Each is checked on board32 at the layout's target heap
(``board_runtime.LAYOUT_HEAP``) the way the client checks receipts (``DeviceProtocol.verify_receipt``: anchor
signature of a known gateway, certified header, both inclusion proofs), by a new device each time (no header
cache), the device holding chain id, validator keys, group key and the gateway's key. Runs alternate between
the two receipts (``--rounds`` each); each run times ``--checks`` checks with ``time.ticks_us``.

Printed per layout and certificate: median milliseconds per check (first check of a run apart: it loads
the modules), peak live heap of the run, and the ratio threshold / votes. With ``--qemu``, also the QEMU
board's instructions per check (Cortex-M3, library in ROMFS, ``-icount shift=0``, 110 KB heap: exact and
the same on every run), each shape checked ``--checks`` times after one check that loads its code.

Usage: ``python3 -m ledgerlink.tools.receipt_cost [--nodes 4] [--rounds 3] [--checks 3] [--qemu]``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from ledgerlink.core import cbor, merkle

CHECK = """
import gc, json, time
from ledgerlink.core import cbor
from ledgerlink.protocol import device_protocol as dp

class Counter:
    n = 0
    def next(self):
        self.n += 1
        return self.n

with open(INPUT + '/case.cbor', 'rb') as f:
    case = cbor.loads(f.read())
times = []
for i in range(%(checks)d):
    dev = dp.DeviceProtocol(case['key'], 'cost', Counter(), case['chain'], case['validators'], None,
                            case['gateways'], group_key=case['group_key'])
    gc.collect()
    t = time.ticks_us()
    r = dev.verify_receipt(case['receipt'], case['frame'])
    times.append(time.ticks_diff(time.ticks_us(), t))
    if not r.valid:
        raise ValueError(r.reason)
    dev = r = None
print(json.dumps(times))
"""
SHAPES = ("votes", "threshold")
QEMU_HEAP_KB = 110

QEMU_SETUP = """
import gc, time
from ledgerlink.core import cbor
from ledgerlink.protocol import device_protocol as dp

class Counter:
    n = 0
    def next(self):
        self.n += 1
        return self.n

case = cbor.loads(bytes(blob))
blob = None
gc.collect()

def check(shape):
    dev = dp.DeviceProtocol(case['key'], 'cost', Counter(), case['chain'], case['validators'], None,
                            case['gateways'], group_key=case['group_key'])
    gc.collect()
    t = time.ticks_us()
    r = dev.verify_receipt(case['receipts'][shape], case['frame'])
    dt = time.ticks_diff(time.ticks_us(), t)
    if not r.valid:
        raise ValueError(r.reason)
    return dt
"""


def receipts(data_dir: Path, nodes: int) -> dict[str, Any]:
    """The inputs of both checks, from a running threshold ledger of ``nodes`` validators."""
    from ledgerlink.core.backend import get_backend
    from ledgerlink.ledger.client import LedgerClient
    from ledgerlink.ledger.cluster import LocalCluster
    from ledgerlink.ledger.state import encoding as enc

    cluster = LocalCluster(data_dir, nodes, log_level="WARNING", threshold=True)
    cluster.start()
    try:
        with LedgerClient(cluster.config_path) as client:
            frame = os.urandom(40)
            leaves = [hashlib.sha256(frame).digest()] + [os.urandom(32) for _ in range(7)]
            tree = merkle.MerkleTree(leaves)
            gateway = cluster.key("gateway")
            tx = enc.anchor_tx(cluster.config.chain_id, gateway, 1, tree.root(), len(leaves), int(time.time() * 1000))
            if not client.submit(tx).get("ok"):
                raise RuntimeError("the anchor transaction was not committed")
            deadline = time.monotonic() + 30
            while (p := client.tx_proof(hashlib.sha256(tx).digest())).get("threshold_header") is None:
                if time.monotonic() > deadline:
                    raise RuntimeError("no threshold certificate for the anchor's block")
                time.sleep(0.1)
        genesis = json.loads(cluster.config_path.read_text())["genesis"]
        crypto = get_backend("cpython")
        base = {0: 1, 1: leaves[0], 2: 1, 3: 0, 4: len(leaves), 5: list(tree.inclusion_proof(0)),
                6: {1: p["tx"], 2: p["index"], 3: p["size"], 4: p["proof"]}}
        return {"chain": cluster.config.chain_id, "validators": list(cluster.config.validators),
                "group_key": bytes.fromhex(genesis["group_key"]), "frame": frame, "key": crypto.generate_private_key(),
                "gateways": {enc.device_id(crypto.public_key(gateway, True)): crypto.public_key(gateway, True)},
                "receipts": {"votes": {**base, 7: p["certified_header"]},
                             "threshold": {**base, 7: p["threshold_header"]}}}
    finally:
        cluster.stop()


def measure(inputs: dict[str, Any], rounds: int = 3, checks: int = 3) -> dict[str, dict[str, dict[str, float]]]:
    """{layout: {shape: {"ms": median ms per check after the first, "first_ms", "peak": bytes}}}."""
    from ledgerlink.tools.board_runtime import LAYOUTS, Board

    out: dict[str, dict[str, dict[str, float]]] = {}
    for layout in LAYOUTS:
        samples: dict[str, dict[str, list[float]]] = {s: {"later": [], "first": [], "peak": []} for s in SHAPES}
        with Board(layout) as board:
            for _ in range(rounds):
                for shape in SHAPES:          # interleaved, so load drift hits both alike
                    case = dict(inputs, receipt=inputs["receipts"][shape])
                    del case["receipts"]
                    (board.input / "case.cbor").write_bytes(cbor.dumps(case))
                    times, result = board.run_json_result(CHECK % {"checks": checks})
                    samples[shape]["first"].append(times[0] / 1000)
                    samples[shape]["later"].extend(t / 1000 for t in times[1:])
                    samples[shape]["peak"].append(result.peak_live)
        out[layout] = {s: {"ms": statistics.median(v["later"]) if v["later"] else float("nan"),
                           "first_ms": statistics.median(v["first"]), "peak": max(v["peak"])}
                       for s, v in samples.items()}
    return out


def qemu_instructions(inputs: dict[str, Any], checks: int = 3) -> dict[str, list[int]]:
    """{shape: QEMU instructions of each check after a warm-up check}, the shapes interleaved on one board."""
    from ledgerlink.tools.qemu_board import QemuBoard, library_image

    out: dict[str, list[int]] = {s: [] for s in SHAPES}
    with tempfile.TemporaryDirectory(prefix="ledgerlink-receipt-cost-") as tmp:
        image = library_image(Path(tmp) / "lib.romfs")
        with QemuBoard(image, heap_kb=QEMU_HEAP_KB, icount=0) as board:
            board.put("blob", cbor.dumps(inputs))
            board.exec(QEMU_SETUP)
            for shape in SHAPES:
                board.exec("check(%r)" % shape, timeout=1800)
            for _ in range(checks):
                for shape in SHAPES:
                    text = board.exec("print('ICOUNT', check(%r))" % shape, timeout=1800)
                    out[shape].append(int(text.split("ICOUNT")[-1]) * 1000)
    return out


def format_qemu(counts: dict[str, list[int]], nodes: int) -> list[str]:
    mean = {s: sum(v) / len(v) for s, v in counts.items()}
    return ["One receipt check on the QEMU board (N = %d, ROMFS, %d KB heap, -icount shift=0), instructions:"
            % (nodes, QEMU_HEAP_KB)] + ["  %-10s %8.1f M  (%s)" % (s, mean[s] / 1e6, ", ".join("%.1f" % (c / 1e6)
                                                                                                  for c in counts[s]))
                                       for s in SHAPES] + ["  threshold / votes: %.2f" % (mean["threshold"] /
                                                                                        mean["votes"])]


def format_table(result: dict[str, dict[str, dict[str, float]]], nodes: int) -> list[str]:
    from ledgerlink.tools.board_runtime import LAYOUT_HEAP

    lines = ["One receipt check on board32 (N = %d validators; anchor signature, header, both inclusion proofs;"
             % nodes, "  a new device per check; median ms of later checks, first check of a run with its imports):",
             "  %-6s %-6s %-10s %10s %12s %12s" % ("layout", "heap", "header", "ms/check", "first ms", "peak live")]
    for layout, shapes in result.items():
        for shape, r in shapes.items():
            lines.append("  %-6s %-6s %-10s %10.1f %12.1f %12d" % (layout, "%dK" % (LAYOUT_HEAP[layout] // 1024), shape,
                                                                 r["ms"], r["first_ms"], r["peak"]))
        lines.append("  %-6s threshold / votes: %.2f per check, %.2f first check" % (
            layout, shapes["threshold"]["ms"] / shapes["votes"]["ms"],
            shapes["threshold"]["first_ms"] / shapes["votes"]["first_ms"]))
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m ledgerlink.tools.receipt_cost", description=__doc__.split("\n")[0])
    parser.add_argument("--nodes", type=int, default=4, help="validators (3f+1, at least 4)")
    parser.add_argument("--rounds", type=int, default=3, help="runs per certificate shape and layout")
    parser.add_argument("--checks", type=int, default=3, help="checks per run")
    parser.add_argument("--qemu", action="store_true", help="also count the QEMU board's instructions per check")
    args = parser.parse_args(argv)
    if args.nodes < 4 or (args.nodes - 1) % 3:
        parser.error("--nodes must be 3f+1 and at least 4")
    with tempfile.TemporaryDirectory(prefix="ledgerlink-receipt-cost-") as tmp:
        inputs = receipts(Path(tmp) / "ledger", args.nodes)
    print("\n".join(format_table(measure(inputs, args.rounds, args.checks), args.nodes)), flush=True)
    if args.qemu:
        print("\n".join(format_qemu(qemu_instructions(inputs, args.checks), args.nodes)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
