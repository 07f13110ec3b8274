"""Record contracts: anchors, ECQV certificate records, firmware, provenance, communication, warnings."""

import hashlib

import pytest

from ledgerlink.core import merkle
from ledgerlink.ledger.state import Reason, RecordKind as RK, TxKind
from ledgerlink.ledger.state import encoding as enc
from tests.devnet import DevNet


@pytest.fixture
def net():
    return DevNet()


@pytest.fixture
def state(net):
    return net.genesis()


def codes(results):
    return [r.code for r in results]


def h(label):
    return hashlib.sha256(label.encode()).digest()


# -- anchors ---------------------------------------------------------------------------------------

def test_anchor_happy_path(net, state):
    frames = [b"frame-%d" % i for i in range(5)]
    root = merkle.root_of(frames)
    tx = net.tx("gateway", TxKind.ANCHOR, {4: 7, 5: root, 6: len(frames)})
    other_gw = net.tx("gateway2", TxKind.ANCHOR, {4: 7, 5: h("x"), 6: 1})
    bstr_id = net.tx("gateway", TxKind.ANCHOR, {4: b"batch-0001", 5: h("y"), 6: 3})
    assert codes(net.block(state, [tx, other_gw, bstr_id])) == [0, 0, 0]
    rec = state.get_record(RK.ANCHOR, [net["gateway"].id, 7])
    assert rec == {1: net["gateway"].id, 2: 7, 3: root, 4: 5, 5: 1, 6: net.time_ms, 7: enc.tx_id(tx)}
    assert state.get_record(RK.ANCHOR, [net["gateway2"].id, 7])[3] == h("x")
    assert state.get_record(RK.ANCHOR, [net["gateway"].id, b"batch-0001"])[4] == 3


def test_anchor_refusals(net, state):
    good = net.tx("gateway", TxKind.ANCHOR, {4: 1, 5: h("a"), 6: 2})
    assert codes(net.block(state, [good])) == [0]
    txs = [
        net.tx("sensor", TxKind.ANCHOR, {4: 2, 5: h("a"), 6: 2}),
        net.tx("admin", TxKind.ANCHOR, {4: 2, 5: h("a"), 6: 2}),
        net.tx("gateway", TxKind.ANCHOR, {4: 1, 5: h("b"), 6: 2}),             # batch id reused
        net.tx("gateway", TxKind.ANCHOR, {4: 3, 5: h("a")[:31], 6: 2}),
        net.tx("gateway", TxKind.ANCHOR, {4: 3, 5: h("a"), 6: 0}),
        net.tx("gateway", TxKind.ANCHOR, {4: -3, 5: h("a"), 6: 1}),
        net.tx("gateway", TxKind.ANCHOR, {4: b"", 5: h("a"), 6: 1}),
        net.tx("gateway", TxKind.ANCHOR, {4: 3, 5: h("a")}),
    ]
    root = state.state_root()
    assert codes(net.block(state, txs)) == [Reason.NOT_AUTHORIZED, Reason.NOT_AUTHORIZED, Reason.ALREADY_EXISTS] + \
        [Reason.INVALID_FIELD] * 5
    assert state.state_root() == root
    assert state.get_record(RK.ANCHOR, [net["gateway"].id, 1])[3] == h("a")


# -- ECQV certificate records ------------------------------------------------------------------------

def _cert(net, signer, cert_hash, subject="sensor", serial=b"\x01", valid=(1000, 2000)):
    return enc.cert_record_tx(net.chain_id, net[signer].priv, cert_hash, net[subject].id, b"fog-ca-1",
                              valid[0], valid[1], serial, net.time_ms, nonce=net.nonce(), backend=net.backend)


def test_cert_record_happy_path(net, state):
    cert_hash = h("cert-1")
    assert codes(net.block(state, [_cert(net, "gateway", cert_hash), _cert(net, "admin", h("cert-2"))])) == [0, 0]
    rec = state.get_record(RK.CERT, cert_hash)
    assert rec == {1: net["sensor"].id, 2: b"fog-ca-1", 3: 1000, 4: 2000, 5: b"\x01", 6: net["gateway"].id,
                   7: 1, 8: net.time_ms}


def test_cert_record_of_an_issued_ecqv_certificate(net, state):
    from ledgerlink.core import ecqv

    subject = net["sensor"].id
    _, request_point = ecqv.create_request()
    cert_bytes, _ = ecqv.issue(request_point, net["gateway"].priv, b"\x00\x07", b"fog-ca-1", subject,
                               1_700_000_000, 1_700_003_600)
    tx = enc.cert_record_tx_for(net.chain_id, net["gateway"].priv, cert_bytes, net.time_ms, nonce=net.nonce(),
                                backend=net.backend)
    again = enc.cert_record_tx_for(net.chain_id, net["gateway2"].priv, cert_bytes, net.time_ms, nonce=net.nonce(),
                                   backend=net.backend)
    assert codes(net.block(state, [tx, again])) == [0, Reason.CERTIFICATE_REUSE]
    rec = state.get_record(RK.CERT, hashlib.sha256(cert_bytes).digest())
    assert (rec[1], rec[2], rec[3], rec[4], rec[5]) == \
        (subject, b"fog-ca-1", 1_700_000_000, 1_700_003_600, b"\x00\x07")


def test_cert_hash_reuse_is_refused(net, state):
    cert_hash = h("cert-1")
    first = _cert(net, "gateway", cert_hash)
    same_block = _cert(net, "gateway2", cert_hash, subject="actuator")
    assert codes(net.block(state, [first, same_block])) == [0, Reason.CERTIFICATE_REUSE]
    later = _cert(net, "gateway", cert_hash, serial=b"\x02")
    assert codes(net.block(state, [later])) == [Reason.CERTIFICATE_REUSE]
    assert state.check_tx(_cert(net, "admin", cert_hash), net.time_ms) == Reason.CERTIFICATE_REUSE
    assert state.get_record(RK.CERT, cert_hash)[1] == net["sensor"].id


def test_cert_record_refusals(net, state):
    ban = net.tx("admin", TxKind.BAN, {4: net["actuator"].id, 5: "x"})
    assert codes(net.block(state, [ban])) == [0]
    txs = [
        _cert(net, "sensor", h("a")),
        _cert(net, "maintenance", h("a")),
        _cert(net, "gateway", h("a"), subject="outsider"),
        _cert(net, "gateway", h("a"), subject="actuator"),
        _cert(net, "gateway", h("a"), valid=(2000, 2000)),
        _cert(net, "gateway", h("a"), serial=b""),
        _cert(net, "gateway", h("a")[:16]),
    ]
    root = state.state_root()
    assert codes(net.block(state, txs)) == [Reason.NOT_AUTHORIZED, Reason.NOT_AUTHORIZED, Reason.UNKNOWN_TARGET,
                                            Reason.WRONG_STATUS, Reason.INVALID_FIELD, Reason.INVALID_FIELD,
                                            Reason.INVALID_FIELD]
    assert state.state_root() == root


# -- firmware and configuration --------------------------------------------------------------------------

def _fw(net, signer, image, version="1.0.0", cls="sensor-v2", image_type=1, size=None):
    return enc.firmware_tx(net.chain_id, net[signer].priv, image, version, cls, image_type, net.time_ms,
                           size=size, nonce=net.nonce(), backend=net.backend)


def test_firmware_happy_path(net, state):
    txs = [_fw(net, "maintenance", h("fw1"), size=65536), _fw(net, "maintenance", h("cfg1"), "c1", image_type=2),
           _fw(net, "maintenance", h("fw2"), "1.1.0")]
    assert codes(net.block(state, txs)) == [0, 0, 0]
    rec = state.get_record(RK.FIRMWARE, h("fw1"))
    assert rec == {1: 1, 2: "1.0.0", 3: "sensor-v2", 4: 65536, 5: net["maintenance"].id, 6: 1, 7: net.time_ms}
    assert 4 not in state.get_record(RK.FIRMWARE, h("cfg1"))
    assert state.get_record(RK.FIRMWARE_LATEST, [1, "sensor-v2"]) == {1: h("fw2"), 2: "1.1.0", 3: 1}
    assert state.get_record(RK.FIRMWARE_LATEST, [2, "sensor-v2"]) == {1: h("cfg1"), 2: "c1", 3: 1}


@pytest.mark.parametrize("signer", ["admin", "gateway", "sensor", "controller", "validator1"])
def test_firmware_is_maintenance_only(net, state, signer):
    root = state.state_root()
    assert codes(net.block(state, [_fw(net, signer, h("fw1"))])) == [Reason.NOT_AUTHORIZED]
    assert state.state_root() == root


def test_firmware_refusals(net, state):
    assert codes(net.block(state, [_fw(net, "maintenance", h("fw1"))])) == [0]
    txs = [
        _fw(net, "maintenance", h("fw1"), "2.0"),
        _fw(net, "maintenance", h("fw2"), image_type=4),
        _fw(net, "maintenance", h("fw2"), version=""),
        _fw(net, "maintenance", h("fw2"), cls="c" * 65),
        _fw(net, "maintenance", h("fw2")[:20]),
    ]
    assert codes(net.block(state, txs)) == [Reason.ALREADY_EXISTS] + [Reason.INVALID_FIELD] * 4
    assert state.get_record(RK.FIRMWARE, h("fw1"))[2] == "1.0.0"


# -- provenance and communication ---------------------------------------------------------------------

def _prov(net, signer, material, produced=None, key=None):
    return enc.provenance_tx(net.chain_id, net[signer].priv, material, "mine-3, Kiruna", "B-2024-17", "coil",
                             net.time_ms - 5000 if produced is None else produced, key or net["tag"].pub,
                             net.time_ms, nonce=net.nonce(), backend=net.backend)


def test_provenance_records(net, state):
    assert codes(net.block(state, [_prov(net, "controller", b"mat-1"), _prov(net, "sensor", b"mat-2")])) == [0, 0]
    rec = state.get_record(RK.PROVENANCE, b"mat-1")
    assert rec == {1: "mine-3, Kiruna", 2: "B-2024-17", 3: "coil", 4: net.time_ms - 5000, 5: net["tag"].pub,
                   6: net["controller"].id, 7: 1}
    txs = [
        _prov(net, "controller", b"mat-1"),
        _prov(net, "controller", b"mat-3", produced=net.time_ms + 10 * state.max_skew_ms),
        _prov(net, "controller", b"mat-3", key=b"\x04" + bytes(64)),
        _prov(net, "controller", b""),
        _prov(net, "outsider", b"mat-3"),
    ]
    root = state.state_root()
    assert codes(net.block(state, txs)) == [Reason.ALREADY_EXISTS, Reason.INVALID_FIELD, Reason.INVALID_FIELD,
                                            Reason.INVALID_FIELD, Reason.UNKNOWN_DEVICE]
    assert state.state_root() == root


def _comm(net, signer, sender="sensor", receiver="gateway", digest=None, msg_type="reading"):
    return enc.communication_tx(net.chain_id, net[signer].priv, net[sender].id, net[receiver].id, msg_type, 120,
                                digest or h("msg"), net.time_ms, nonce=net.nonce(), backend=net.backend)


def test_communication_records(net, state):
    txs = [_comm(net, "sensor"), _comm(net, "gateway", sender="controller", receiver="actuator", msg_type=3)]
    assert codes(net.block(state, txs)) == [0, 0]
    rec = state.get_record(RK.COMMUNICATION, [net["sensor"].id, h("msg")])
    assert rec == {1: net["sensor"].id, 2: net["gateway"].id, 3: "reading", 4: 120, 5: h("msg"),
                   6: net["sensor"].id, 7: 1, 8: net.time_ms}
    txs = [
        _comm(net, "sensor"),
        _comm(net, "actuator", digest=h("m2")),
        _comm(net, "sensor", receiver="outsider", digest=h("m2")),
        _comm(net, "gateway", sender="outsider", digest=h("m2")),
        _comm(net, "sensor", msg_type="", digest=h("m2")),
        _comm(net, "sensor", digest=h("m2")[:8]),
    ]
    root = state.state_root()
    assert codes(net.block(state, txs)) == [Reason.ALREADY_EXISTS, Reason.NOT_AUTHORIZED, Reason.UNKNOWN_TARGET,
                                            Reason.UNKNOWN_TARGET, Reason.INVALID_FIELD, Reason.INVALID_FIELD]
    assert state.state_root() == root


# -- warnings ----------------------------------------------------------------------------------------

def test_warnings_batch(net, state):
    off = net["sensor"].id
    entries = [enc.warning_entry(h("f1"), off, net.time_ms - 10, 5, "bad signature"),
               enc.warning_entry(h("f2"), off, net.time_ms - 5, 7),
               enc.warning_entry(h("f3"), b"", net.time_ms - 1, 1)]
    tx = enc.warnings_tx(net.chain_id, net["gateway"].priv, entries, net.time_ms, nonce=net.nonce(),
                         backend=net.backend)
    assert codes(net.block(state, [tx])) == [0]
    gw = net["gateway"].id
    assert state.get_record(RK.WARNING, [gw, h("f1")]) == {1: off, 2: net.time_ms - 10, 3: 5, 4: "bad signature",
                                                           5: gw, 6: 1}
    assert state.get_record(RK.WARNING, [gw, h("f3")])[1] == b""
    assert state.get_record(RK.OFFENCES, off) == {1: 2, 2: net.time_ms - 5, 3: 7, 4: gw}
    assert state.get_record(RK.OFFENCES, b"") is None


def test_warnings_refusals(net, state):
    def wtx(signer, entries):
        return net.tx(signer, TxKind.WARNINGS, {4: entries})

    e1 = enc.warning_entry(h("f1"), b"x", 1, 5)
    assert codes(net.block(state, [wtx("gateway", [e1])])) == [0]
    txs = [
        wtx("sensor", [enc.warning_entry(h("f2"), b"x", 1, 5)]),
        wtx("gateway", [enc.warning_entry(h("f2"), b"x", 1, 5), e1]),           # one already recorded
        wtx("gateway", [enc.warning_entry(h("f2"), b"x", 1, 5)] * 2),           # duplicate inside the batch
        wtx("gateway", []),
        wtx("gateway", [enc.warning_entry(h("f%d" % i), b"x", 1, 5) for i in range(10, 43)]),
        wtx("gateway", [enc.warning_entry(h("f2"), b"x", 1, 0)]),
        wtx("gateway", [{1: h("f2"), 2: b"x", 3: 1}]),
        wtx("gateway", [{1: h("f2"), 2: b"x", 3: 1, 4: 5, 9: 0}]),
        wtx("gateway", ["entry"]),
        wtx("gateway", {1: 2}),
    ]
    root = state.state_root()
    assert codes(net.block(state, txs)) == [Reason.NOT_AUTHORIZED, Reason.ALREADY_EXISTS, Reason.ALREADY_EXISTS] + \
        [Reason.INVALID_FIELD] * 7
    assert state.state_root() == root
    assert state.get_record(RK.WARNING, [net["gateway"].id, h("f2")]) is None
    # A different gateway may report the same frame.
    assert codes(net.block(state, [wtx("gateway2", [e1])])) == [0]
