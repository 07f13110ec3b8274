"""Gateway session state stays bounded: expired sessions, their certificates and used request ids are
forgotten, a device keeps a few sessions at most, and a restart re-installs only unexpired certificates."""

from __future__ import annotations

from ledgerlink.gateway import checks as c
from ledgerlink.gateway.service import GatewayService
from ledgerlink.gateway.store import Store
from tests.devnet import DevNet

from tests.gateway.fake_ledger import FakeLedgerAdapter
from tests.gateway.test_checks import NOW, SITE, CRYPTO, Env, _session, refused


def open_session(e: Env, nonce: bytes, now: int = NOW) -> bytes:
    """Open a session for "sensor"; returns the certificate."""
    _, _, topic, req = _session(e, nonce=nonce, now=now)
    effects = e.feed(topic, req, now)
    issued = [x for x in effects if isinstance(x, c.CertIssued)]
    assert issued, effects
    return issued[0].cert


def test_expired_sessions_certificates_and_request_ids_are_forgotten():
    e = Env()
    open_session(e, b"a" * 16)
    assert len(e.core.sessions) == 1 and e.core.issued_certs and e.core.used_requests
    lifetime_ms = e.core.limits.session_lifetime_s * 1000
    e.core.tick(NOW + e.core.limits.max_skew_ms * 3)
    assert len(e.core.sessions) == 1 and not e.core.used_requests     # ids outlive no request time
    e.core.tick(NOW + lifetime_ms + 1000)
    assert not e.core.sessions and not e.core.issued_certs


def test_a_used_request_is_refused_while_its_time_is_acceptable():
    e = Env()
    _, _, topic, req = _session(e, nonce=b"b" * 16)
    e.feed(topic, req)
    e.core.tick(NOW + 1000)
    refused(e.one(topic, req, NOW + 1000), c.CERTIFICATE_REUSE)


def test_a_device_keeps_a_bounded_number_of_sessions():
    e = Env(c.Limits(burst=100.0))
    for i in range(12):
        open_session(e, bytes([i]) * 16)
    mine = [s for s in e.core.sessions.values() if s.device_id == e.net["sensor"].id]
    assert len(mine) == e.core.limits.sessions_per_device < 12
    assert len(e.core.issued_certs) == len(e.core.sessions)


def test_restart_reinstalls_only_unexpired_certificates(tmp_path):
    ledger = FakeLedgerAdapter(clock=lambda: DevNet().time_ms)
    net = ledger.net
    store = Store(tmp_path / "gw.db")
    dev = net["sensor"].id
    lifetime_s = c.Limits().session_lifetime_s
    old_ms = NOW - (lifetime_s + 3600) * 1000
    e = Env()
    old = open_session(e, b"o" * 16, old_ms)
    new = open_session(e, b"n" * 16, NOW)
    store.add_cert(dev, old, old_ms)
    store.add_cert(dev, new, NOW)
    keys = c.GatewayKeys(net["gateway"].priv, net["gw-ca"].priv, net["gw-site"].priv)
    core = c.GatewayCore(SITE, keys, net.chain_id, ledger.keys, backend=CRYPTO)
    installed: list[bytes] = []
    install = core.install_session
    core.install_session = lambda cert, d: installed.append(cert) or install(cert, d)
    GatewayService(core, store).restore(NOW)
    assert installed == [new]


def test_a_session_is_valid_from_the_devices_request_time():
    """A device whose clock is behind the gateway's (within the skew allowed) can use its certificate at once."""
    e = Env()
    behind = NOW - 1500
    _, _, topic, req = _session(e, nonce=b"c" * 16, now=behind)          # the device's clock
    cert = [x for x in e.feed(topic, req, NOW) if isinstance(x, c.CertIssued)][0].cert
    parsed = c.ecqv.decode_cert(cert)
    assert parsed.valid_at(behind // 1000)
    assert parsed.valid_until == NOW // 1000 + e.core.limits.session_lifetime_s
