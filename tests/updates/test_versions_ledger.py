"""The ledger holds what each device runs: the device signs a version statement at its first report and after
an install, the update service relays it, and the device-version contract records it only when the device's
registered, not banned key signed it for a recorded release of its class. A forged statement, one of an
unregistered device or of another class, an unknown digest, a banned device and a replay are refused with
their reasons and leave the record as it was. The /versions page shows the ledger's value, proved."""

from __future__ import annotations

import itertools
import json
from types import SimpleNamespace

import pytest

from ledgerlink.core import cbor
from ledgerlink.core.errors import InvalidMessage
from ledgerlink.gateway.dashboard import Dashboard
from ledgerlink.ledger.state.codes import Reason, RecordKind
from ledgerlink.protocol import ledger_tx, spv, update_transport as ut, update_version as uv
from ledgerlink.protocol.codes import IMAGE_APP_LIBRARY, IMAGE_CONFIGURATION
from ledgerlink.tools.admin_release import UpdateService
from tests.updates.site import DEVICE_CLASS, ReleaseSite, offer_digest
from tests.updates.test_update_agent import make_agent
from tests.updates.test_update_transport import _pump

CONFIG = b'{"interval_s": 3}' * 20


class _Ledger:
    """The update service's ledger client over the test chain: each submit is one block."""

    def __init__(self, site: ReleaseSite) -> None:
        self.site = site
        self.config = SimpleNamespace(chain_id=site.chain_id, genesis={}, validators=site.keys)

    def record(self, kind: int, record_id: object) -> dict:
        return {"proof": self.site.proof(kind, record_id)}

    def submit(self, tx: bytes) -> dict:
        return {"status": "committed", "code": self.site.commit([tx])[0], "height": self.site.height}


def _signer(site: ReleaseSite, name: str = "sensor", start: int = 0):
    member = site.net[name]
    clock = itertools.count(site.net.time_ms + start, 10)
    return member.id, (lambda message: site.net.backend.sign(member.priv, message)), (lambda: next(clock))


def _now(site: ReleaseSite) -> int:
    """A statement time after the test chain's last block time and within its skew of the next."""
    return site.net.time_ms + site.height * 1000 + 1


def _recorded(site: ReleaseSite, device: bytes, component: int) -> dict | None:
    proof = site.proof(RecordKind.DEVICE_VERSION, [device, component])
    _, key, value = spv.verify_record_proof(cbor.dumps(proof), site.chain_id, site.keys)
    assert key == spv.state_key(RecordKind.DEVICE_VERSION, [device, component])
    return None if value is None else cbor.loads(value)


def _statement(site: ReleaseSite, name: str = "sensor", digest: bytes | None = None, sequence: int = 0,
               device_class: str = DEVICE_CLASS, signer: str | None = None, time_ms: int | None = None,
               device: bytes | None = None) -> bytes:
    key = site.net[signer or name].priv
    return uv.sign_statement(site.chain_id, device or site.net[name].id, device_class, IMAGE_CONFIGURATION, sequence,
                             digest, site.net.time_ms if time_ms is None else time_ms,
                             lambda m: site.net.backend.sign(key, m))


def _relay(site: ReleaseSite, statement: bytes, by: str = "gateway") -> int:
    tx = ledger_tx.device_version_tx(site.chain_id, site.net[by].priv, statement, site.net.time_ms,
                                     nonce=site.net.nonce(), backend=site.net.backend)
    return site.commit([tx])[0]


@pytest.fixture
def installed(tmp_path):
    """A device (the chain's sensor) that reported, installed config release 2 and reported again, relayed."""
    site = ReleaseSite()
    service = UpdateService("127.0.0.1", 1, "plant", tmp_path / "releases", ledger=_Ledger(site),
                            relay_key=site.net["gateway"].priv, clock_ms=lambda: site.net.time_ms)
    offer = site.release(CONFIG, IMAGE_CONFIGURATION, 2, version="cfg-2")
    service.publisher.add(ut.Release(offer, CONFIG))
    agent = make_agent(site, tmp_path)
    agent.boot(0)
    client = ut.UpdateClient(agent, signer=_signer(site))
    device = site.net["sensor"].id
    _pump(client, service.publisher, [client.status()], device=device)
    answers = service.relay()
    return SimpleNamespace(site=site, service=service, client=client, device=device, digest=offer_digest(offer),
                           answers=answers)


def test_an_install_is_recorded_from_the_devices_statement(installed):
    site, device = installed.site, installed.device
    # a new device runs nothing it could state at its first report; after the install: config release 2
    assert [(a["status"], a["code"]) for a in installed.answers] == [("committed", 0)]
    rec = _recorded(site, device, IMAGE_CONFIGURATION)
    assert rec[1] == 2 and rec[2] == installed.digest and rec[3] == "cfg-2" and rec[4] == DEVICE_CLASS
    assert rec[6] == site.net["gateway"].id
    assert _recorded(site, device, IMAGE_APP_LIBRARY) is None
    # a repeated status signs nothing new
    assert cbor.loads(installed.client.status())[1].get(4) is None
    # after a restart, the first report states what runs again, and the ledger takes the newer statement
    restarted = ut.UpdateClient(installed.client.agent, signer=_signer(site, start=500))
    assert installed.service.publisher.handle(device, restarted.status()) == []
    assert [a["code"] for a in installed.service.relay()] == [0]
    again = _recorded(site, device, IMAGE_CONFIGURATION)
    assert [again[k] for k in (1, 2, 3, 4)] == [rec[k] for k in (1, 2, 3, 4)] and again[5] > rec[5]


def _refused(installed, statement: bytes, reason: int, by: str = "gateway") -> None:
    site = installed.site
    before = _recorded(site, installed.device, IMAGE_CONFIGURATION)
    assert _relay(site, statement, by) == reason
    assert _recorded(site, installed.device, IMAGE_CONFIGURATION) == before
    assert ledger_tx.reason_name(reason) != "code-%d" % reason


def test_forged_statement_is_refused(installed):
    """Signed by another registered key (the relayer's own) for the sensor: bad signature."""
    later = _now(installed.site)
    _refused(installed, _statement(installed.site, signer="gateway", time_ms=later), Reason.BAD_SIGNATURE)
    # one signed for another chain
    other = uv.sign_statement("another-chain", installed.device, DEVICE_CLASS, IMAGE_CONFIGURATION, 0, None, later,
                              lambda m: installed.site.net.backend.sign(installed.site.net["sensor"].priv, m))
    _refused(installed, other, Reason.BAD_SIGNATURE)


def test_statement_of_an_unregistered_device_is_refused(installed):
    _refused(installed, _statement(installed.site, name="stranger", time_ms=_now(installed.site)),
             Reason.UNKNOWN_TARGET)


def test_statement_naming_a_release_of_another_class_is_refused(installed):
    site = installed.site
    site.release(b"other", IMAGE_CONFIGURATION, 5, device_class="pump-v1")
    other = offer_digest(site.release(b"other2", IMAGE_CONFIGURATION, 6, device_class="pump-v1"))
    later = _now(site)
    _refused(installed, _statement(site, digest=other, sequence=6, time_ms=later), Reason.WRONG_CLASS)
    # the device's own release under another sequence than it was recorded with
    _refused(installed, _statement(site, digest=installed.digest, sequence=3, time_ms=later + 1), Reason.WRONG_CLASS)


def test_statement_against_the_registered_class_is_refused():
    site = ReleaseSite()
    assert site.commit([site.net.register("admin", "pump", 1, {"name": "pump", "class": "pump-v1"})]) == [0]
    assert _relay(site, _statement(site, name="pump")) == Reason.WRONG_CLASS
    assert _relay(site, _statement(site, name="pump", device_class="pump-v1")) == 0


def test_unknown_digest_is_refused(installed):
    later = _now(installed.site)
    _refused(installed, _statement(installed.site, digest=b"\x07" * 32, sequence=2, time_ms=later),
             Reason.UNKNOWN_RELEASE)


def test_banned_device_is_refused(installed):
    site = installed.site
    assert site.commit([ledger_tx.ban_tx(site.chain_id, site.net["admin"].priv, installed.device, "stolen",
                                         site.net.time_ms, nonce=site.net.nonce(), backend=site.net.backend)]) == [0]
    _refused(installed, _statement(site, time_ms=_now(site)), Reason.WRONG_STATUS)


def test_replayed_older_statement_is_refused(installed):
    """The first report's statement (as deployed), relayed again after the install, cannot lower the record."""
    site = installed.site
    _refused(installed, _statement(site, time_ms=site.net.time_ms), Reason.REPLAY)
    _refused(installed, _statement(site, time_ms=site.net.time_ms + 10**9), Reason.CLOCK_SKEW)


def test_malformed_statement_is_refused(installed):
    good = _statement(installed.site, time_ms=_now(installed.site))
    _refused(installed, good[:-1], Reason.INVALID_FIELD)
    with pytest.raises(InvalidMessage):
        uv.decode_statement(cbor.dumps([cbor.dumps({1: b"x"}), bytes(64)]))


def test_versions_page_shows_the_ledgers_value(installed, tmp_path):
    site = installed.site

    def record(kind, rid):
        return {"proof": site.proof(kind, rid)}

    (tmp_path / "releases").mkdir(exist_ok=True)
    # the service's file says release 1 (a stale or lying report); the ledger holds the device's statement of 2
    reported = {installed.device.hex(): {"class": DEVICE_CLASS, "components": {
        "config": {"running": 1, "version": "cfg-1", "trial": False}}}}
    (tmp_path / "releases" / "versions.json").write_text(json.dumps(reported))
    core = SimpleNamespace(chain_id=site.chain_id, validator_keys=site.keys, group_key=None, site="plant",
                           gateway_name="gw")
    ledger = SimpleNamespace(record=record, config=SimpleNamespace(path=tmp_path / "cluster.json"))
    dashboard = SimpleNamespace(metrics=SimpleNamespace(core=core), ledger=ledger)
    status, _, body = Dashboard._answer(dashboard, "/versions", {})
    rows = [r for r in body.decode().split("<tr>") if installed.device.hex()[:16] in r and "config" in r]
    assert status == 200 and len(rows) == 1
    row = rows[0]
    assert "2 cfg-2 (on the ledger)" in row and "up to date" in row and "cfg-1" not in row
    assert "device version verified (header" in row


@pytest.mark.slow
def test_a_board_states_its_install_with_its_key(tmp_path):
    """board32 at an ESP32's heap: after the install the board's status carries a statement of it, signed by
    the board's identity key (signing loads update_version only then, and forgets it after the message)."""
    from ledgerlink.core.backend import get_backend
    from tests.updates.test_update_board_mqtt import KEY, load_profile, run_board

    out, result, _, offer, publisher = run_board(tmp_path, load_profile("esp32")["memory"]["heap_bytes"])
    assert out["installed"] and result.peak_live < result.heap_bytes
    statements = publisher.take_statements()
    assert len(statements) == 1
    device, statement = statements[0]
    body, fields, sig = uv.decode_statement(statement)
    backend = get_backend("cpython")
    pub = backend.public_key(KEY, True)
    assert device == fields[1] == ledger_tx.device_id(pub)
    assert (fields[2], fields[3], fields[4], fields[5]) == (DEVICE_CLASS, IMAGE_CONFIGURATION, 3, offer_digest(offer))
    assert backend.verify(pub, uv.tbs(ReleaseSite().chain_id, body), sig)


def test_admin_versions_prints_the_ledgers_value(installed, tmp_path, capsys):
    """``ledgerlink admin versions`` shows the device's statement from the ledger (proved) over a stale report,
    and marks a device without one as reported only."""
    import argparse

    from ledgerlink.tools.admin_release import cmd_versions

    site = installed.site

    def proven_record(kind, record_id):
        proof = site.proof(kind, record_id)
        header, _, value = spv.verify_record_proof(cbor.dumps(proof), site.chain_id, site.keys)
        return (None if value is None else cbor.loads(value)), header, 3

    stale = {"running": 1, "version": "cfg-1", "trial": False, "accepted": 1}
    reported = {installed.device.hex(): {"class": DEVICE_CLASS, "components": {"config": stale}},
                "ab" * 16: {"class": DEVICE_CLASS, "components": {"config": stale}}}
    (tmp_path / "releases").mkdir(exist_ok=True)
    (tmp_path / "releases" / "versions.json").write_text(json.dumps(reported))
    ctx = SimpleNamespace(cluster_path=tmp_path / "cluster.json", proven_record=proven_record,
                          proof_line=lambda header, votes: "proof verified against header %d" % header.height)
    assert cmd_versions(ctx, argparse.Namespace(releases=None)) == 0
    lines = capsys.readouterr().out.splitlines()
    stated = lines[lines.index("device %s class %r" % (installed.device.hex(), DEVICE_CLASS)) + 1]
    other = lines[lines.index("device %s class %r" % ("ab" * 16, DEVICE_CLASS)) + 1]
    assert "config      runs 2 (cfg-2); latest 2 (cfg-2) on the ledger: up to date [stated by the device" in stated
    assert "cfg-1" not in stated
    assert "runs 1 (cfg-1); latest 2 (cfg-2) on the ledger: BEHIND [reported to the update service" in other
