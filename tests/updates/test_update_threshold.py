"""Update offers on a ledger with threshold headers: the record proofs' headers name the validator set with its
FROST group key, so a device checks an offer with the group key in its trust anchor, and without it refuses it
(the header names another set)."""

import random

import pytest

from ledgerlink.core import frost
from ledgerlink.protocol import update_check as uc
from ledgerlink.protocol.codes import IMAGE_CONFIGURATION
from tests.updates.site import DEVICE_CLASS, ReleaseSite


class ThresholdReleaseSite(ReleaseSite):
    """``ReleaseSite`` whose headers name ``validators_hash(keys, group_key)``, as a threshold ledger's do (record
    proofs carry the commit votes of those headers)."""

    def __init__(self) -> None:
        _, _, self.group_key = frost.trusted_dealer_keygen(None, 4, 3, random.Random(5).randbytes)
        super().__init__()


def test_an_offer_of_a_threshold_ledger_checks_with_the_group_key_only():
    site = ThresholdReleaseSite()
    offer = site.release(b'{"a": 1}', IMAGE_CONFIGURATION, 1)
    signed = uc.check_offer(offer, site.chain_id, site.keys, DEVICE_CLASS, "cpython", group_key=site.group_key)
    assert signed.manifest.sequence == 1
    with pytest.raises(uc.UpdateRefused) as refused:
        uc.check_offer(offer, site.chain_id, site.keys, DEVICE_CLASS, "cpython")
    assert refused.value.code == uc.UPDATE_BAD_PROOF and "different validator set" in str(refused.value)


def test_the_update_agent_takes_the_group_key_of_its_device(tmp_path):
    from ledgerlink.protocol import update_agent as ua

    site = ThresholdReleaseSite()
    offer = site.release(b'{"a": 2}', IMAGE_CONFIGURATION, 1)
    files = ua.Files()
    target = ua.ConfigTarget(files, str(tmp_path / "cfg"))
    agent = ua.UpdateAgent(str(tmp_path / "upd"), DEVICE_CLASS, site.chain_id, site.keys, [target], files, "cpython",
                           group_key=site.group_key)
    agent.provision()
    agent.boot(0)
    assert agent.offer(offer).sequence == 1
    blind = ua.UpdateAgent(str(tmp_path / "upd2"), DEVICE_CLASS, site.chain_id, site.keys, [target], files, "cpython")
    blind.provision()
    blind.boot(0)
    with pytest.raises(uc.UpdateRefused, match="different validator set"):
        blind.offer(offer)
