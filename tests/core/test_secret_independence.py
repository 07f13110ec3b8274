"""Regression guard for the constant-time rules of the portable core: no secret-dependent branch or table index.

Each secret-key operation (key generation, ECDSA signing, ECDH, a device's ECQV session open, and both
base-point multiplication methods) runs under a tracer for three secrets: one with its top 64 bits zero and
two random ones. The test asserts two things about the portable code in ``sdk/core``:

- control flow: the sequence of executed bytecode instructions (function, instruction offset) is the same
  for every secret, so no ``if``, loop count or early exit follows a secret;
- table reads: the precomputed base-point tables are read in the same order, entry by entry, for every
  secret, so a secret digit never picks an entry (``table[digit]`` in place of the masked scan fails here).

A list read costs the same MicroPython fuel whatever its index, so fuel counts cannot show the second rule;
the tracer sees both. It does not see the cost of big-integer arithmetic, which the leakage command
(``python3 -m ledgerlink.tools.leakage``) measures statistically.
"""

from __future__ import annotations

import os
import random
import sys
from pathlib import Path

import pytest

from ledgerlink.core import ecdh, ecdsa, ecqv, p256, p256_ct, session_keys

CORE = str(Path(p256.__file__).resolve().parent)
# Functions of public data only: the signature's s, points that are published (R_U, P_U, Q_U), and the
# variable-time multiplications the core keeps for public scalars and points (ECQV's e*P_U + Q_CA).
# What they call is left out with them.
PUBLIC_DATA = {"canonical_s", "is_canonical", "encode_point", "decode_point", "decode_cert",
               "mul_add_vartime", "mul_vartime", "add_vartime", "mul_add_x_equals"}
MESSAGE = b"ledgerlink secret independence"


class RecordingTable(list):
    """A precomputed table that logs every read: the index of each subscript, or one mark per full scan."""

    log: list = []

    def __getitem__(self, index):
        self.log.append(("get", id(self), index))
        return list.__getitem__(self, index)

    def __iter__(self):
        self.log.append(("scan", id(self)))
        return list.__iter__(self)


def _recording(rows):
    """Wrap a table (a list of entries) or a list of table rows, keeping the wrappers stable across calls."""
    if rows and isinstance(rows[0], list):
        return RecordingTable(RecordingTable(row) for row in rows)
    return RecordingTable(rows)


def _secrets() -> list[int]:
    rnd = random.Random(6979)
    return [0x5C0FFEE1D15EA5E0DDBA11DEADBEA7F00D1234567890ABCDEF,      # top 64 bits zero
            rnd.randrange(1, p256.N), rnd.randrange(1, p256.N)]


def _inside_public(frame) -> bool:
    while frame is not None:
        if frame.f_code.co_name in PUBLIC_DATA and frame.f_code.co_filename.startswith(CORE):
            return True
        frame = frame.f_back
    return False


def _trace(operation, secret: int) -> list:
    """The instructions ``operation(secret)`` executes in the portable core, and its table reads."""
    steps: list = []
    RecordingTable.log = []

    def local(frame, event, arg):
        if event == "opcode":
            steps.append((frame.f_code.co_name, frame.f_lasti))
        elif event == "call":
            steps.append((frame.f_code.co_name, "call"))
        return local

    def global_(frame, event, arg):
        code = frame.f_code
        if not code.co_filename.startswith(CORE) or _inside_public(frame):
            return None
        frame.f_trace_opcodes = True
        steps.append((code.co_name, "enter"))
        return local

    sys.settrace(global_)
    try:
        operation(secret)
    finally:
        sys.settrace(None)
    reads = [(entry[0], entry[2] if entry[0] == "get" else None) for entry in RecordingTable.log]
    return [steps, reads]


@pytest.fixture
def recording_tables(monkeypatch):
    """Base-point tables wrapped so their reads are logged (built before the traced calls)."""
    comb = _recording(p256._comb_table())
    windows = _recording(p256._window_tables())
    monkeypatch.setattr(p256, "_comb_table", lambda: comb)
    monkeypatch.setattr(p256, "_window_tables", lambda: windows)


def _fixed_rng(secret: int):
    return lambda n: secret.to_bytes(32, "big")[:n]


def _session_open(secret: int) -> None:
    """A device's side of an ECQV session: request, reconstruct d_U, derive the session keys (the CA's
    answer is made outside the trace: it is another party's work)."""
    k_u, r_u = ecqv.create_request(_fixed_rng(secret))
    cert, r = ISSUED[r_u]
    d_u, _ = ecqv.reconstruct(k_u, cert, r, CA_PUBLIC)
    session_keys.derive(d_u, SITE_PUBLIC, cert, b"d" * 16, b"g" * 16, backend="portable")


class _Issuer(dict):
    def __missing__(self, r_u: bytes):
        self[r_u] = ecqv.issue(r_u, CA_PRIVATE, b"\x01", b"ca", b"dev", 0, 10 ** 9, peer=SITE_PUBLIC,
                               rng=_fixed_rng(7))
        return self[r_u]


CA_PRIVATE = p256.scalar_to_bytes(0x1C0FFEE)
CA_PUBLIC = ecdsa.public_key(CA_PRIVATE)
SITE_PUBLIC = ecdsa.public_key(p256.scalar_to_bytes(0x51DE))
PEER_PUBLIC = ecdsa.public_key(p256.scalar_to_bytes(0x3D4B7E))
ISSUED = _Issuer()

OPERATIONS = {
    "keygen": lambda k: ecdsa.public_key(p256.scalar_to_bytes(k)),
    "base_mult windows": lambda k: p256.base_mult(k, "windows"),
    "base_mult comb": lambda k: p256.base_mult(k, "comb"),
    "ecdsa.sign": lambda k: ecdsa.sign(p256.scalar_to_bytes(k), MESSAGE),
    "ecdh": lambda k: ecdh.shared_secret(p256.scalar_to_bytes(k), PEER_PUBLIC),
    "session open": _session_open,
}


@pytest.mark.parametrize("name", sorted(OPERATIONS))
def test_control_flow_and_table_reads_do_not_depend_on_the_secret(name: str, recording_tables) -> None:
    operation = OPERATIONS[name]
    if name == "session open":
        for k in _secrets():
            ISSUED[ecqv.create_request(_fixed_rng(k))[1]]
    operation(_secrets()[0])                    # tables built on first use are built before the traces
    traces = [_trace(operation, k) for k in _secrets()]
    steps, reads = traces[0]
    assert len(steps) > 1000, "the tracer saw too little of %s: is it running the portable core?" % name
    for other_steps, other_reads in traces[1:]:
        assert other_steps == steps, "%s: executed instructions depend on the secret" % name
        assert other_reads == reads, "%s: table reads depend on the secret" % name
    if name.startswith("base_mult") or name in ("keygen", "ecdsa.sign", "session open"):
        assert reads, "%s read no precomputed table: the guard on table reads is not exercised" % name


DIRECT_READS = {
    "base_mult comb": ("_select", "def _select(table, digit):\n    return _unpack(table[digit])\n"),
    "base_mult windows": ("_select_affine", "def _select_affine(row, digit):\n"
                          "    e = row[(abs(digit) - 1) >> 1]\n"
                          "    y = e >> 256\n"
                          "    return e & ((1 << 256) - 1), (y if digit > 0 else P - y)\n"),
}


@pytest.mark.parametrize("name", sorted(DIRECT_READS))
def test_the_guard_sees_a_secret_table_index(name: str, monkeypatch, recording_tables) -> None:
    """The mutation the guard exists for: the masked scan replaced by a direct read of the entry."""
    function, source = DIRECT_READS[name]
    namespace = dict(vars(p256_ct))
    exec(compile(source, p256_ct.__file__, "exec"), namespace)
    monkeypatch.setattr(p256_ct, function, namespace[function])
    with pytest.raises(AssertionError, match="depend on the secret"):
        test_control_flow_and_table_reads_do_not_depend_on_the_secret(name, None)


def test_the_guard_sees_a_secret_branch(monkeypatch, recording_tables) -> None:
    """A secret-dependent early exit, compiled as part of the core, changes the executed instructions."""
    namespace = {"original": p256_ct._check_scalar}
    exec(compile("def _check_scalar(k):\n    if k & 1:\n        return None\n    return original(k)\n",
                 p256_ct.__file__, "exec"), namespace)
    monkeypatch.setattr(p256_ct, "_check_scalar", namespace["_check_scalar"])
    odd, even = _secrets()[1] | 1, _secrets()[2] & ~1
    assert _trace(OPERATIONS["base_mult comb"], odd)[0] != _trace(OPERATIONS["base_mult comb"], even)[0]


def test_portable_core_is_what_runs() -> None:
    assert os.path.isdir(CORE) and Path(ecdsa.__file__).resolve().parent == Path(CORE)
