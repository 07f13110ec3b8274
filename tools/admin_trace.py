"""``ledgerlink admin trace LOT``: a lot's provenance back to its raw material, every step proved.

Each lot's provenance record is fetched from the ledger with its record proof and checked against the
trusted validators (a certified header signed by 2f+1 of them, the record under its state root) before
its input lots (record field 8) are followed, so a lying node can neither invent nor hide a step: a
missing input shows as "proven absent", a proof that does not check stops the trace with an error.
Used by the admin command and the dashboard's trace page; tested in tests/m2m/test_material_chain.py.
"""

from __future__ import annotations

import argparse
from typing import Any, Callable

from ledgerlink.core import cbor
from ledgerlink.core.errors import LedgerlinkError
from ledgerlink.protocol import spv
from ledgerlink.protocol.ledger_tx import RECORD_PROVENANCE, state_key

MAX_STEPS = 256         # lots shown in one trace


class TraceError(Exception):
    """A proof that does not check, or an answer that is not a provenance record."""


class TraceStep:
    """One lot of a trace: ``lot``, ``depth`` (0: the lot asked for), ``record`` (None: proven absent),
    ``height`` of the header its proof checked under, ``inputs``."""

    def __init__(self, lot: bytes, depth: int, record: dict | None, height: int) -> None:
        self.lot = lot
        self.depth = depth
        self.record = record
        self.height = height
        self.inputs: list[bytes] = list(record.get(8, [])) if record else []

    def as_json(self) -> dict[str, Any]:
        rec = self.record or {}
        return {"lot": _lot_text(self.lot), "depth": self.depth, "recorded": self.record is not None,
                "form": rec.get(3), "origin": rec.get(1), "batch": rec.get(2), "produced_ms": rec.get(4),
                "by": rec[6].hex() if isinstance(rec.get(6), bytes) else None, "record_height": rec.get(7),
                "proof_height": self.height, "inputs": [_lot_text(i) for i in self.inputs]}


def _lot_text(lot: bytes) -> str:
    """A lot id as text when it is printable ASCII, else hex."""
    try:
        text = lot.decode("ascii")
        if text.isprintable():
            return text
    except UnicodeDecodeError:
        pass
    return lot.hex()


def parse_lot(text: str) -> bytes:
    """A lot id from the command line: ``hex:...`` for hex, else the text's bytes."""
    return bytes.fromhex(text[4:]) if text.startswith("hex:") else text.encode()


def trace(record_proof: Callable[[int, Any], Any], chain_id: str, validators: list[bytes],
          lot: bytes, group_key: bytes | None = None) -> list[TraceStep]:
    """The steps of ``lot``'s provenance, breadth first; ``record_proof(kind, id)`` returns a record-proof
    (map or CBOR bytes) from the ledger (``group_key``: the set's FROST group key, when its headers name
    one). TraceError when any proof does not check."""
    steps: list[TraceStep] = []
    seen = {lot}
    todo = [(lot, 0)]
    while todo and len(steps) < MAX_STEPS:
        current, depth = todo.pop(0)
        proof = record_proof(RECORD_PROVENANCE, current)
        try:
            header, key, value = spv.verify_record_proof(proof if isinstance(proof, (bytes, bytearray))
                                                         else cbor.dumps(proof), chain_id, validators,
                                                         group_key=group_key)
        except (LedgerlinkError, TypeError, KeyError) as exc:
            raise TraceError("the proof of lot %s does not verify: %s" % (_lot_text(current), exc)) from None
        if key != state_key(RECORD_PROVENANCE, current):
            raise TraceError("the proof of lot %s is for another record" % _lot_text(current))
        record = cbor.loads(value) if value is not None else None
        if record is not None and not (isinstance(record, dict) and isinstance(record.get(3), str)):
            raise TraceError("the record of lot %s is not a provenance record" % _lot_text(current))
        step = TraceStep(current, depth, record, header.height)
        steps.append(step)
        for parent in step.inputs:
            if isinstance(parent, bytes) and parent not in seen:
                seen.add(parent)
                todo.append((parent, depth + 1))
    return steps


def add_parser(with_ledger: Callable[..., argparse.ArgumentParser]) -> None:
    t = with_ledger("trace", help="a lot's provenance back to its raw material, every step proved")
    t.add_argument("lot", metavar="LOT", help="the lot id (text, or hex:... for bytes)")


def cmd_trace(ctx: Any, args: argparse.Namespace) -> int:
    """Print the trace (``ctx``: the admin command's Context)."""
    from ledgerlink.tools.admin import EXIT_FAILED, EXIT_OK, AdminError

    def record_proof(kind: int, record_id: Any) -> Any:
        res = ctx.call("record", kind, record_id)
        if not res.get("ok"):
            raise AdminError("ledger error: %s" % res.get("error"))
        return res["proof"]

    try:
        steps = trace(record_proof, ctx.chain_id, ctx.validators, parse_lot(args.lot), ctx.group_key)
    except TraceError as exc:
        raise AdminError(str(exc)) from None
    n = len(ctx.validators)
    for step in steps:
        pad = "  " * step.depth
        if step.record is None:
            print("%s%s: not recorded (absence proven under header %d)" % (pad, _lot_text(step.lot), step.height))
            continue
        rec = step.record
        print("%s%s: %s, batch %s, from %s, by %s at height %d; proof verified against header %d (2f+1 = %d of %d)"
              % (pad, _lot_text(step.lot), rec[3], rec[2], rec[1], rec[6].hex()[:16], rec[7], step.height,
                 spv.quorum(n), n))
    return EXIT_OK if steps and steps[0].record is not None else EXIT_FAILED
