"""The QEMU board (emulated Cortex-M3, 110 KB heap, the library in the ROMFS image deploy builds): the core
operations give the same bytes as CPython, instruction counts under -icount are repeatable, and a
program error comes back with the board's traceback."""

import hashlib

import pytest

from ledgerlink import cpython_cbor
from ledgerlink.core import cbor, cose, ecdh, ecdsa, kdf, merkle
from ledgerlink.core.backend import get_backend
from ledgerlink.tools import qemu_board
from ledgerlink.tools.qemu_board import BoardCodeError, QemuBoard

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
    """Two boots with -icount shift=0 count the same instructions for one signature (fixed key)."""
    counts = []
    for _ in range(2):
        with QemuBoard(image, heap_kb=110, icount=0) as board:
            board.exec("import gc, time\nfrom ledgerlink.core import ecdsa\nd = bytes(31) + b'\\x01'")
            out = board.exec(qemu_board.MEASURE % ("ecdsa.sign(d, b'm')", "ecdsa.sign(d, b'm')"))
            counts.append(int(out.split("ICOUNT")[-1]) * 1000)
    assert counts[0] == counts[1] and 10_000_000 < counts[0] < 200_000_000
