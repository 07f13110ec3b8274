"""Device registry contracts: genesis, register, rotate-key, ban, unban, and the common tx checks."""

import pytest
from hypothesis import given, settings, strategies as st

from ledgerlink.core import cbor, cose, p256
from ledgerlink.core.backend import get_backend
from ledgerlink.ledger.state import LedgerState, Reason, RecordKind, Role, StateError, TxKind, device_id
from ledgerlink.ledger.state import encoding as enc
from ledgerlink.ledger.state.codes import DeviceStatus
from tests.devnet import DevNet


@pytest.fixture
def net():
    return DevNet()


@pytest.fixture
def state(net):
    return net.genesis()


def codes(results):
    return [r.code for r in results]


def test_genesis_registers_admins_validators_and_devices(net, state):
    for name in net.admin_names:
        assert state.device_status(net[name].id)["role"] == Role.ADMIN
    for name in net.validator_names:
        assert state.device_status(net[name].id)["role"] == Role.VALIDATOR
    assert state.device_status(net["gateway"].id)["role"] == Role.GATEWAY
    assert state.device_status(net["outsider"].id) is None
    chain = state.get_record(RecordKind.CHAIN, 0)
    assert chain[1] == net.chain_id
    assert chain[5] == [net[n].pub for n in net.validator_names]
    assert state.chain_id == net.chain_id and state.height is None


def test_genesis_refuses_bad_configs(net):
    cfg = net.config()
    with pytest.raises(ValueError):
        LedgerState.genesis(dict(cfg, admins=[]))
    with pytest.raises(ValueError):
        LedgerState.genesis(dict(cfg, chain_id=""))
    with pytest.raises(ValueError):
        LedgerState.genesis(dict(cfg, validators=[net["admin"].pub]))  # same key twice
    with pytest.raises(ValueError):
        LedgerState.genesis(dict(cfg, admins=[b"\x02" + b"\xff" * 32]))  # not a point
    with pytest.raises(ValueError):
        LedgerState.genesis(dict(cfg, devices=[{"key": net["x"].pub, "role": 9}]))


def test_genesis_accepts_uncompressed_keys_and_is_deterministic(net):
    cfg = net.config()
    cfg["admins"] = [net.backend.public_key(net["admin"].priv, False)]
    a, b = LedgerState.genesis(cfg), LedgerState.genesis(cfg)
    assert a.state_root() == b.state_root()
    assert a.device_status(net["admin"].id)["public_key"] == net["admin"].pub
    assert a.state_root() != net.genesis().state_root()


def test_register_happy_path(net, state):
    attrs = {"name": "press-7", "model": "PX-200", "location": "hall 2", "slot": 4}
    tx = net.register("admin", "newdev", Role.SENSOR, attrs)
    assert state.check_tx(tx, net.time_ms) is None
    root0 = state.state_root()
    assert codes(net.block(state, [tx])) == [0]
    assert state.state_root() != root0
    status = state.device_status(net["newdev"].id)
    assert status["role"] == Role.SENSOR and status["status"] == DeviceStatus.ACTIVE
    assert status["attributes"] == attrs
    assert status["public_key"] == net["newdev"].pub
    assert status["registered_by"] == net["admin"].id
    assert status["registered_at"] == net.time_ms and status["key_version"] == 1
    # The new device can now submit transactions of its own.
    assert codes(net.block(state, [net.rotate("newdev", "newdev-key2")])) == [0]


@pytest.mark.parametrize("role", list(Role))
def test_admin_registers_every_role(net, state, role):
    assert codes(net.block(state, [net.register("admin2", "d%d" % role, role)])) == [0]
    assert state.device_status(net["d%d" % role].id)["role"] == role


@pytest.mark.parametrize("submitter", ["gateway", "sensor", "maintenance", "validator0", "controller"])
def test_non_admin_may_not_register(net, state, submitter):
    root = state.state_root()
    assert codes(net.block(state, [net.register(submitter, "newdev", Role.SENSOR)])) == [Reason.NOT_AUTHORIZED]
    assert state.state_root() == root
    assert state.device_status(net["newdev"].id) is None


def test_duplicate_registration(net, state):
    first = net.register("admin", "newdev", Role.SENSOR)
    again = net.register("admin2", "newdev", Role.ACTUATOR)
    assert codes(net.block(state, [first, again])) == [0, Reason.ALREADY_EXISTS]
    assert codes(net.block(state, [net.register("admin", "gateway", Role.GATEWAY)])) == [Reason.ALREADY_EXISTS]
    assert state.device_status(net["newdev"].id)["role"] == Role.SENSOR


def _request(net, name, payload, signer=None, kid=None):
    member = net[name]
    return cose.sign1(cbor.dumps(payload), net[signer or name].priv, kid or member.id, b"", net.backend)


def _payload(net, name, over=None):
    member = net[name]
    payload = {1: member.id, 2: member.pub, 3: int(Role.SENSOR), 4: {"name": name}, 5: net.time_ms}
    payload.update(over or {})
    return payload


def test_bad_proof_of_possession(net, state):
    dev = net["newdev"]
    cases = [
        _request(net, "newdev", _payload(net, "newdev"), signer="other"),        # signed by another key
        _request(net, "newdev", _payload(net, "newdev", {1: net["other"].id})),  # id of another key
        _request(net, "newdev", _payload(net, "newdev"), kid=net["other"].id),     # kid not the device id
        _request(net, "newdev", _payload(net, "newdev", {2: net["other"].pub}), kid=net["other"].id),
    ]
    sig_flip = bytearray(net.request("newdev", Role.SENSOR))
    sig_flip[-1] ^= 1
    cases.append(bytes(sig_flip))
    root = state.state_root()
    txs = [net.tx("admin", TxKind.REGISTER, {4: c}) for c in cases]
    assert codes(net.block(state, txs)) == [Reason.BAD_PROOF_OF_POSSESSION] * len(cases)
    assert state.state_root() == root
    assert state.device_status(dev.id) is None


def test_registration_request_field_checks(net, state):
    uncompressed = net.backend.public_key(net["newdev"].priv, False)
    bad = [
        b"not cbor",
        cbor.dumps([1, 2, 3]),
        _request(net, "newdev", _payload(net, "newdev", {3: 8})),                 # no such role
        _request(net, "newdev", _payload(net, "newdev", {3: 0})),
        _request(net, "newdev", _payload(net, "newdev", {4: {"name": 5}})),       # name must be text
        _request(net, "newdev", _payload(net, "newdev", {4: {"x": True}})),
        _request(net, "newdev", _payload(net, "newdev", {4: {"k%d" % i: i for i in range(17)}})),
        _request(net, "newdev", _payload(net, "newdev", {4: []})),
        _request(net, "newdev", _payload(net, "newdev", {2: b"\x02" + b"\xff" * 32})),  # not a point
        _request(net, "newdev", _payload(net, "newdev", {6: 1})),                 # unknown field
        _request(net, "newdev", _payload(net, "newdev", {5: -1})),
        _request(net, "newdev", [1, 2]),
    ]
    txs = [net.tx("admin", TxKind.REGISTER, {4: b}) for b in bad]
    txs.append(net.tx("admin", TxKind.REGISTER, {4: "text"}))
    txs.append(net.tx("admin", TxKind.REGISTER, {}))
    txs.append(net.tx("admin", TxKind.REGISTER, {4: net.request("newdev", Role.SENSOR), 5: 1}))
    root = state.state_root()
    assert codes(net.block(state, txs)) == [Reason.INVALID_FIELD] * len(txs)
    assert state.state_root() == root
    # An uncompressed key in the request is accepted and stored compressed.
    ok = _request(net, "newdev", _payload(net, "newdev", {2: uncompressed}))
    assert codes(net.block(state, [net.tx("admin", TxKind.REGISTER, {4: ok})])) == [0]
    assert state.device_status(net["newdev"].id)["public_key"] == net["newdev"].pub


def test_registration_request_from_the_future(net, state):
    late = net.register("admin", "newdev", Role.SENSOR, time_ms=net.time_ms)
    early = net.tx("admin", TxKind.REGISTER,
                   {4: net.request("dev2", Role.SENSOR, time_ms=net.time_ms + state.max_skew_ms + 1)})
    assert codes(net.block(state, [late, early])) == [0, Reason.CLOCK_SKEW]


def test_wrong_signature_and_unknown_submitter(net, state):
    body = {4: net.request("newdev", Role.SENSOR)}
    forged = net.tx("outsider", TxKind.REGISTER, body, kid=net["admin"].id)    # claims to be the admin
    unknown = net.tx("outsider", TxKind.REGISTER, body)
    other_chain = enc.build_tx("other-chain", net["admin"].priv, TxKind.REGISTER, net.time_ms, body,
                               nonce=net.nonce(), backend=net.backend)
    tampered = bytearray(net.tx("admin", TxKind.REGISTER, body))
    tampered[-1] ^= 0x40
    root = state.state_root()
    results = net.block(state, [forged, unknown, other_chain, bytes(tampered)])
    assert codes(results) == [Reason.BAD_SIGNATURE, Reason.UNKNOWN_DEVICE, Reason.BAD_SIGNATURE,
                              Reason.BAD_SIGNATURE]
    assert state.state_root() == root


def test_replayed_nonce(net, state):
    tx = net.register("admin", "newdev", Role.SENSOR)
    assert codes(net.block(state, [tx, tx])) == [0, Reason.REPLAY]
    assert codes(net.block(state, [tx])) == [Reason.REPLAY]
    assert state.check_tx(tx, net.time_ms) == Reason.REPLAY
    # Same nonce, different content: still a replay.
    nonce = net.nonce()
    a = net.register("admin", "dev2", Role.SENSOR)
    b = net.tx("admin", TxKind.BAN, {4: net["sensor"].id, 5: "x"}, nonce=nonce)
    c = net.tx("admin", TxKind.BAN, {4: net["actuator"].id, 5: "y"}, nonce=nonce)
    assert codes(net.block(state, [a, b, c])) == [0, 0, Reason.REPLAY]
    # Another submitter may use the same nonce.
    d = net.tx("admin2", TxKind.BAN, {4: net["actuator"].id, 5: "y"}, nonce=nonce)
    assert codes(net.block(state, [d])) == [0]


def test_stale_and_future_time(net, state):
    skew = state.max_skew_ms
    t = net.time_ms + 10 * skew
    txs = [
        net.register("admin", "a", Role.SENSOR, time_ms=t - skew - 1),
        net.register("admin", "b", Role.SENSOR, time_ms=t + skew + 1),
        net.register("admin", "c", Role.SENSOR, time_ms=t - skew),
        net.register("admin", "d", Role.SENSOR, time_ms=t + skew),
    ]
    assert codes(net.block(state, txs, time_ms=t)) == [Reason.CLOCK_SKEW, Reason.CLOCK_SKEW, 0, 0]
    assert state.check_tx(net.register("admin", "e", Role.SENSOR, time_ms=t), now_ms=t + skew + 1) == Reason.CLOCK_SKEW


def test_malformed_and_oversized(net, state):
    good_body = cbor.dumps({1: 4, 2: net.time_ms, 3: net.nonce(), 4: net["sensor"].id, 5: "x"})
    aad = enc.tx_aad(net.chain_id)
    admin = net["admin"]

    def signed(payload):
        return cose.sign1(payload, admin.priv, admin.id, aad, net.backend)

    malformed = [
        b"",
        b"\xff" * 40,
        cbor.dumps([1, 2, 3]),
        cbor.dumps(cbor.Tag(18, [b"", {}, b"", b""])),
        cose.sign1(good_body, admin.priv, b"short", aad, net.backend),            # kid not 16 bytes
        signed(b"\x01\x02"),                                                       # payload not CBOR
        signed(cbor.dumps([1, 2])),                                                # body not a map
        signed(cbor.dumps({1: 4, 2: net.time_ms})),                                # no nonce
        signed(cbor.dumps({1: 4, 2: net.time_ms, 3: b"short"})),
        signed(cbor.dumps({1: 4, 2: -5, 3: net.nonce()})),
        signed(cbor.dumps({1: "ban", 2: net.time_ms, 3: net.nonce()})),
        signed(cbor.dumps({1: 4, 2: net.time_ms, 3: net.nonce(), "x": 1})),
        signed(cbor.dumps({1: 4, 2: net.time_ms, 3: net.nonce(), -1: 1})),
        signed(cbor.dumps({1: 4, 2: True, 3: net.nonce()})),
        "not bytes",
        None,
    ]
    body = cbor.dumps({1: 3, 2: net.time_ms, 3: net.nonce(), 4: net["sensor"].id, 5: "x" * state.max_tx_bytes})
    oversized = cbor.dumps(cbor.Tag(18, [cbor.dumps({1: -7}), {4: admin.id}, body, bytes(64)]))
    unknown_kind = signed(cbor.dumps({1: 99, 2: net.time_ms, 3: net.nonce()}))
    root = state.state_root()
    results = net.block(state, malformed + [oversized, unknown_kind])
    assert codes(results) == [Reason.MALFORMED] * len(malformed) + [Reason.OVERSIZED, Reason.UNKNOWN_TX_KIND]
    assert all(not r.ok and r.text for r in results)
    assert state.state_root() == root
    assert all(state.check_tx(tx, net.time_ms) == Reason.MALFORMED for tx in malformed)


def test_unknown_fields_are_refused(net, state):
    tx = net.tx("admin", TxKind.BAN, {4: net["sensor"].id, 5: "x", 6: 1})
    assert codes(net.block(state, [tx])) == [Reason.INVALID_FIELD]


def test_rotate_key(net, state):
    old = net["sensor"]
    assert codes(net.block(state, [net.rotate("sensor", "sensor-k2")])) == [0]
    status = state.device_status(old.id)
    assert status["public_key"] == net["sensor-k2"].pub and status["key_version"] == 2
    assert status["key_rotated_at"] == net.time_ms
    # The old key no longer signs for the device; the new key does (kid stays the device id).
    by_old = net.rotate("sensor", "sensor-k3")
    by_new = net.rotate("sensor-k2", "sensor-k3", kid=old.id)
    assert codes(net.block(state, [by_old, by_new])) == [Reason.BAD_SIGNATURE, 0]
    assert state.device_status(old.id)["key_version"] == 3


def test_rotate_key_refusals(net, state):
    dev = net["sensor"]
    nonce = net.nonce()
    new = net["sensor-k2"]
    wrong_pop = net.backend.sign(net["other"].priv, enc.rotation_message(net.chain_id, dev.id, new.pub, nonce))
    pop_other_nonce = net.backend.sign(new.priv, enc.rotation_message(net.chain_id, dev.id, new.pub, bytes(16)))
    pop_other_chain = net.backend.sign(new.priv, enc.rotation_message("x", dev.id, new.pub, nonce))
    txs = [
        net.tx("sensor", TxKind.ROTATE_KEY, {4: new.pub, 5: wrong_pop}, nonce=nonce),
        net.tx("sensor", TxKind.ROTATE_KEY, {4: new.pub, 5: pop_other_nonce}, nonce=bytes([1]) * 16),
        net.tx("sensor", TxKind.ROTATE_KEY, {4: new.pub, 5: pop_other_chain}, nonce=nonce),
    ]
    expected = [Reason.BAD_PROOF_OF_POSSESSION] * 3
    txs.append(net.rotate("sensor", "sensor"))                                       # same key
    txs.append(net.tx("sensor", TxKind.ROTATE_KEY, {4: b"\x02" + b"\xff" * 32, 5: bytes(64)}))
    txs.append(net.tx("sensor", TxKind.ROTATE_KEY, {4: new.pub, 5: bytes(63)}))
    expected += [Reason.INVALID_FIELD] * 3
    root = state.state_root()
    assert codes(net.block(state, txs)) == expected
    assert state.state_root() == root


def test_ban_and_unban(net, state):
    sensor = net["sensor"]
    t = net.time_ms + 5
    assert codes(net.block(state, [net.tx("admin", TxKind.BAN, {4: sensor.id, 5: "tampered"}, time_ms=t)],
                          time_ms=t)) == [0]
    status = state.device_status(sensor.id)
    assert status["banned"] and status["ban"] == {1: t, 2: net["admin"].id, 3: "tampered"}
    # A banned device's transactions are refused.
    assert codes(net.block(state, [net.rotate("sensor", "k2")], time_ms=t)) == [Reason.BANNED_DEVICE]
    assert codes(net.block(state, [net.tx("admin2", TxKind.BAN, {4: sensor.id, 5: "again"})],
                          time_ms=t)) == [Reason.WRONG_STATUS]
    t2 = t + 1000
    unban = net.tx("admin2", TxKind.UNBAN, {4: sensor.id, 5: "repaired"}, time_ms=t2)
    assert codes(net.block(state, [unban], time_ms=t2)) == [0]
    status = state.device_status(sensor.id)
    assert not status["banned"] and status["unban"] == {1: t2, 2: net["admin2"].id, 3: "repaired"}
    assert status["ban"][3] == "tampered"
    assert codes(net.block(state, [net.rotate("sensor", "k2", time_ms=t2)], time_ms=t2)) == [0]
    again = net.tx("admin", TxKind.UNBAN, {4: sensor.id, 5: "x"}, time_ms=t2)
    assert codes(net.block(state, [again], time_ms=t2)) == [Reason.WRONG_STATUS]


def test_ban_refusals(net, state):
    txs = [
        net.tx("gateway", TxKind.BAN, {4: net["sensor"].id, 5: "x"}),
        net.tx("maintenance", TxKind.UNBAN, {4: net["sensor"].id, 5: "x"}),
        net.tx("admin", TxKind.BAN, {4: net["admin"].id, 5: "self"}),
        net.tx("admin", TxKind.BAN, {4: net["outsider"].id, 5: "x"}),
        net.tx("admin", TxKind.BAN, {4: net["sensor"].id, 5: ""}),
        net.tx("admin", TxKind.BAN, {4: net["sensor"].id[:8], 5: "x"}),
    ]
    root = state.state_root()
    assert codes(net.block(state, txs)) == [Reason.NOT_AUTHORIZED, Reason.NOT_AUTHORIZED, Reason.NOT_AUTHORIZED,
                                            Reason.UNKNOWN_TARGET, Reason.INVALID_FIELD, Reason.INVALID_FIELD]
    assert state.state_root() == root


def test_banned_admin_loses_its_powers(net, state):
    assert codes(net.block(state, [net.tx("admin2", TxKind.BAN, {4: net["admin"].id, 5: "lost"})])) == [0]
    assert codes(net.block(state, [net.register("admin", "newdev", Role.SENSOR)])) == [Reason.BANNED_DEVICE]


def test_device_id_derivation(net):
    pub = net["x"].pub
    assert device_id(pub) == device_id(net.backend.public_key(net["x"].priv, False))
    import hashlib
    assert device_id(pub) == hashlib.sha256(pub).digest()[:16]


def test_block_protocol_errors(net, state):
    state.execute(5, net.time_ms, [])
    with pytest.raises(StateError):
        state.execute(6, net.time_ms, [])
    with pytest.raises(StateError):
        state.commit(6)
    state.commit(5)
    with pytest.raises(StateError):
        state.execute(7, net.time_ms, [])
    with pytest.raises(StateError):
        state.execute(6, net.time_ms - 1, [])
    with pytest.raises(StateError):
        state.commit(6)
    with pytest.raises(KeyError):
        state.results_of(3)
    assert state.results_of(5) == []


@settings(max_examples=25, deadline=None)
@given(st.integers(1, p256.N - 1), st.sampled_from(["portable", "cpython"]))
def test_own_key_ids_are_the_device_id_of_the_public_key(scalar, backend):
    be = get_backend(backend)
    priv = scalar.to_bytes(32, "big")
    dev = device_id(be.public_key(priv, False))              # from the uncompressed form, decoded and checked
    tx = enc.build_tx("chain", priv, TxKind.BAN, 1, {4: b"x" * 16}, nonce=b"n" * 16, backend=be)
    assert cose.decode_sign1(tx).kid == dev
    req = enc.registration_request(priv, Role.SENSOR, {"name": "n"}, 1, be)
    assert cose.decode_sign1(req).kid == dev and cbor.loads(cose.decode_sign1(req).payload)[1] == dev
