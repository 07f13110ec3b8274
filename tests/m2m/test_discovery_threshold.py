"""Discovery on a ledger with threshold headers: a device record proof's header names the validator set with its
FROST group key, so the devices and the directory check it with the group key, and refuse it without."""

import pytest

from ledgerlink.ledger.state.codes import RecordKind
from ledgerlink.protocol import discovery as dsc
from tests.updates.test_update_threshold import ThresholdReleaseSite


def test_a_device_record_of_a_threshold_ledger_checks_with_the_group_key_only():
    site = ThresholdReleaseSite()
    dev = site.net["maintenance"].id
    proof = site.proof(RecordKind.DEVICE, dev)
    rec = dsc.partner(proof, site.chain_id, site.keys, dev, 0, "cpython", site.group_key)
    assert rec.device_id == dev and rec.pubkey == site.net["maintenance"].pub
    assert [r.device_id for r in dsc.partners([proof], site.chain_id, site.keys, {}, 0, "cpython", site.group_key)] \
        == [dev]
    with pytest.raises(dsc.DiscoveryError, match="different validator set"):
        dsc.partner(proof, site.chain_id, site.keys, dev, 0, "cpython")
    assert dsc.partners([proof], site.chain_id, site.keys, {}, 0, "cpython") == []


def test_the_directory_checks_with_the_group_key():
    from ledgerlink.gateway.directory import Directory

    site = ThresholdReleaseSite()
    dev = site.net["maintenance"].id

    class Ledger:
        def record(self, kind, record_id):
            return {"ok": True, "proof": site.proof(kind, record_id)}

    _, rec = Directory(Ledger(), site.chain_id, site.keys, "plant", group_key=site.group_key).device(dev)
    assert rec is not None and rec.device_id == dev
    with pytest.raises(dsc.DiscoveryError):
        Directory(Ledger(), site.chain_id, site.keys, "plant").device(dev)
