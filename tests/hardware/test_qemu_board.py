"""The QEMU board (emulated Cortex-M3, 110 KB heap, the library in the ROMFS image deploy builds): the core
operations give the same bytes as CPython, instruction counts under -icount are repeatable, and a
program error comes back with the board's traceback."""

import hashlib
import time

import pytest

from ledgerlink import cpython_cbor
from ledgerlink.core import cbor, cose, ecdh, ecdsa, kdf, merkle
from ledgerlink.core.backend import get_backend
from ledgerlink.tools import qemu_board
from ledgerlink.tools.board_runtime import CycleSite
from ledgerlink.tools.qemu_board import BoardCodeError, QemuBoard
from ledgerlink.tools.stack import Stack
from tests.mqtt_helpers import Verified

pytestmark = [pytest.mark.micropython]

PRIV = hashlib.sha256(b"qemu board key").digest()
PEER = hashlib.sha256(b"qemu board peer").digest()
MESSAGE = b"reading 21.5 C at hall 2"
AAD = b"ll/site/dev/0011/up"
CCM_KEY = bytes(range(16))
CCM_NONCE = bytes(range(13))
ENTRIES = [b"tx %d" % i for i in range(7)]
DOC = {1: b"\x00" * 16, 2: 7, 3: 1_700_000_000_000, 4: {"t": -12, "ok": True, "tags": ["a", "b"]}, -1: None}

CORE_PROGRAM = """
from ledgerlink.core import cbor, ccm, cose, ecdh, ecdsa, kdf, merkle
h = bytes.fromhex
priv = h(%(priv)r); peer = h(%(peer)r); msg = h(%(msg)r); aad = h(%(aad)r)
key = h(%(key)r); nonce = h(%(nonce)r)
def out(name, value):
    print('R', name, value.hex())
pub = ecdsa.public_key(priv)
out('public_key', pub)
sig = ecdsa.sign(priv, msg)
out('sign', sig)
out('verify', bytes([ecdsa.verify(pub, msg, sig) is True, ecdsa.verify(pub, msg + b'!', sig) is True]))
out('ecdh', ecdh.shared_secret(priv, ecdsa.public_key(peer)))
out('hkdf', kdf.hkdf(msg, b'salt', b'info', 42))
sealed = ccm.seal(key, nonce, msg, aad, 8)
out('ccm_seal', sealed)
out('ccm_open', ccm.open(key, nonce, sealed, aad, 8))
doc = cbor.loads(h(%(doc)r))
out('cbor', cbor.dumps(doc))
out('sign1', cose.sign1(msg, priv, b'kid-1', aad, backend='portable'))
out('encrypt0', cose.encrypt0(msg, key, partial_iv=b'\\x05', base_iv=nonce, kid=b'kid-1', external_aad=aad))
tree = merkle.MerkleTree([b'tx %%d' %% i for i in range(7)])
out('merkle_root', tree.root())
proof = tree.inclusion_proof(4)
merkle.verify_inclusion(merkle.leaf_hash(b'tx 4'), 4, 7, proof, tree.root())
out('merkle_proof', b''.join(proof))
"""


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    return qemu_board.library_image(tmp_path_factory.mktemp("qemu") / "lib.romfs")


def expected() -> dict[str, bytes]:
    """The same operations on CPython through the CPython backend and codec."""
    fast = get_backend("cpython")
    pub = fast.public_key(PRIV)
    sig = fast.sign(PRIV, MESSAGE)
    sealed = fast.ccm_seal(CCM_KEY, CCM_NONCE, MESSAGE, AAD, 8)
    tree = merkle.MerkleTree(ENTRIES)
    return {
        "public_key": pub, "sign": sig,
        "verify": bytes([fast.verify(pub, MESSAGE, sig), fast.verify(pub, MESSAGE + b"!", sig)]),
        "ecdh": fast.ecdh(PRIV, fast.public_key(PEER)),
        "hkdf": fast.hkdf(MESSAGE, b"salt", b"info", 42),
        "ccm_seal": sealed, "ccm_open": fast.ccm_open(CCM_KEY, CCM_NONCE, sealed, AAD, 8),
        "cbor": cpython_cbor.dumps(DOC),
        "sign1": cose.sign1(MESSAGE, PRIV, b"kid-1", AAD, backend="cpython"),
        "encrypt0": cose.encrypt0(MESSAGE, CCM_KEY, partial_iv=b"\x05", base_iv=CCM_NONCE, kid=b"kid-1",
                                  external_aad=AAD, backend="cpython"),
        "merkle_root": tree.root(), "merkle_proof": b"".join(tree.inclusion_proof(4)),
    }


def test_core_operations_give_cpythons_bytes_on_the_110k_board(image):
    program = CORE_PROGRAM % {"priv": PRIV.hex(), "peer": PEER.hex(), "msg": MESSAGE.hex(), "aad": AAD.hex(),
                              "key": CCM_KEY.hex(), "nonce": CCM_NONCE.hex(), "doc": cbor.dumps(DOC).hex()}
    with QemuBoard(image, heap_kb=110) as board:
        out = board.exec(program)
        heap = int(board.exec("import gc\ngc.collect()\nprint(gc.mem_free() + gc.mem_alloc())"))
        with pytest.raises(BoardCodeError, match="ZeroDivisionError"):
            board.exec("print('before')\n1 // 0")
        assert board.exec("print(pub == ecdsa.public_key(priv))").strip() == "True"   # state kept between execs
    got = {line.split()[1]: bytes.fromhex(line.split()[2]) for line in out.splitlines() if line.startswith("R ")}
    want = expected()
    assert set(got) == set(want)
    for name in want:
        assert got[name] == want[name], name
    assert got["verify"] == b"\x01\x00" and ecdsa.verify(want["public_key"], MESSAGE, got["sign"])
    assert ecdh.shared_secret(PEER, ecdsa.public_key(PRIV)) == got["ecdh"]
    assert kdf.hkdf(MESSAGE, b"salt", b"info", 42) == got["hkdf"]
    assert 100 * 1024 < heap <= 110 * 1024


def test_instruction_counts_are_repeatable(image):
    """Two boots with -icount shift=0 count the same instructions for one signature (fixed key), to the
    resolution of the count."""
    counts = []
    for _ in range(2):
        with QemuBoard(image, heap_kb=110, icount=0) as board:
            board.exec("import gc, time\nfrom ledgerlink.core import ecdsa\nd = bytes(31) + b'\\x01'")
            out = board.exec(qemu_board.MEASURE % ("ecdsa.sign(d, b'm')", "ecdsa.sign(d, b'm')"))
            counts.append(int(out.split("ICOUNT")[-1]) * 1000)
    # equal up to one tick of ticks_us (1,000 instructions): the board's idle time before the operation
    # passes in host time, so the operation starts at another phase of the microsecond
    assert abs(counts[0] - counts[1]) <= 1000 and 10_000_000 < counts[0] < 200_000_000


# --- the client cycle over UART1 ----------------------------------------------------------------

SITE = "qemusite"


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    s = Stack(tmp_path_factory.mktemp("qemustack") / "site", site=SITE, broker="mosquitto")
    s.start()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def site(stack):
    """The stack with a registered controller whose commands the boards check (as board32's cycle does)."""
    return CycleSite(stack)


@pytest.fixture(scope="module")
def cycle_image(tmp_path_factory):
    return qemu_board.cycle_image(tmp_path_factory.mktemp("qemu-cycle") / "lib.romfs")


# Both modes on the 110 KB firmware (a plain ESP32's free heap); `python3 -m ledgerlink.tools.qemu_board
# --cycle` prints both modes at 110 and 190 KB.
@pytest.mark.slow
@pytest.mark.parametrize("mode,heap_kb", [("signed", 110), ("session", 110)])
def test_client_cycle_on_the_qemu_board_over_uart1_to_the_real_stack(stack, site, cycle_image, mode, heap_kb):
    """Library in ROMFS; the board's MQTT bytes go out on UART1, through the host bridge into mosquitto;
    the gateway and the 4-node ledger answer; the board checks every receipt itself (certified header,
    batch proof, anchor), then one controller command against the controller's ledger record."""
    n = qemu_board.CYCLE_READINGS
    app = Verified(stack.broker_port, SITE, "qemu-app-" + mode, stack.consumer_login())
    try:
        report = qemu_board.run_cycle(site, cycle_image, mode, heap_kb=heap_kb)
        deadline = time.monotonic() + 5
        while len([r for r in app.readings if r[1] == report["device_id"]]) < n and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        app.close()
    stats = report["stats"]
    assert report["registered"]["code"] == 0
    assert qemu_board.cycle_ok(report), {k: report.get(k) for k in ("opened", "stats", "command", "wall_s")}
    assert stats["receipts_valid"] == n and stats["receipts_invalid"] == 0, stats
    assert sorted(r[1] for r in report["receipts"]) == list(range(1, n + 1))
    assert all(r[0] is True and r[2] == "" and r[3] >= 1 for r in report["receipts"])
    assert stats["published"] >= n and stats["acked"] >= n
    assert report["command"] == [True, "open-valve", {"pct": 30}, ""]
    if mode == "session":
        assert report["opened"] == 1 and stats["sessions_opened"] == 1
    # the bytes really went over UART1 and the bridge: what the gateway republished is what the board sealed
    assert report["bridge_connections"] >= 1 and min(report["bridge_bytes"]) > 0
    mine = sorted((r for r in app.readings if r[1] == report["device_id"]), key=lambda r: r[2])
    assert [r[4] for r in mine] == [{"t": 20 + i, "i": i} for i in range(n)]
    assert 0 < report["peak_live"] < heap_kb * 1024
    print("QEMU board, %s mode, %d KB: %d receipts checked on the board, peak live heap %d B, %.1f s"
          % (mode, heap_kb, n, report["peak_live"], report["wall_s"]))
