"""The new set's DKG for a validator set change (``admin_validators.run_dkg``) and a replica taking its
share of the new group key at the switch (``reconfig.take_share``): only its own share of the set in
force, read from the file named by the epoch."""

from __future__ import annotations

import os
import stat
from types import SimpleNamespace

from ledgerlink.core import frost
from ledgerlink.core.backend import get_backend
from ledgerlink.ledger.cluster import write_key
from ledgerlink.ledger.consensus.reconfig import share_loader, share_path, take_share
from ledgerlink.tools.admin_validators import run_dkg

CRYPTO = get_backend("cpython")


def new_set(tmp_path, n=4, epoch=1):
    """Key files of an n-validator set and its DKG: (key files, group key, verifying shares)."""
    files, keys = [], []
    for i in range(n):
        priv = CRYPTO.generate_private_key()
        path = tmp_path / ("validator%d.key" % i)
        write_key(path, priv)
        files.append(str(path))
        keys.append(CRYPTO.public_key(priv, True))
    group_key, verifying = run_dkg("ll-test", epoch, keys, dict(enumerate(files)))
    return files, group_key, verifying


def replica(index, group_key, verifying, loader, epoch=1, member=True):
    config = SimpleNamespace(group_key=group_key, verifying_shares=tuple(verifying))
    return SimpleNamespace(config=config, index=index, epoch=epoch, epoch_share=loader, member=member,
                           _rng=os.urandom, _threshold_share=12345)


def test_share_files_are_named_by_epoch_beside_the_key():
    assert str(share_path("/k/validator3-new.key", 2)) == "/k/validator3-new.epoch2.share"
    assert str(share_path("/k/validator3.key", 0)) == "/k/validator3.share"       # the genesis set's


def test_the_dkg_writes_owner_only_shares_that_sign_for_the_group_key(tmp_path):
    files, group_key, verifying = new_set(tmp_path)
    shares = {}
    for i, key_file in enumerate(files):
        path = share_path(key_file, 1)
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        shares[i + 1] = share_loader(key_file)(1)
        assert frost.verifying_share(shares[i + 1]) == verifying[i]
    signers = [1, 3, 4]                                               # t = 2f+1 = 3 of 4
    msg = b"header of the new set"
    held = {i: frost.commit(shares[i], os.urandom, i) for i in signers}
    commitments = [held[i][1] for i in signers]
    z = {i: frost.sign(i, shares[i], group_key, held[i][0], msg, commitments) for i in signers}
    assert frost.verify(group_key, msg, frost.aggregate(group_key, commitments, msg, z))


def test_a_replica_takes_only_its_own_share_of_the_set_in_force(tmp_path):
    files, group_key, verifying = new_set(tmp_path)
    r = replica(2, group_key, verifying, share_loader(files[2]))
    assert take_share(r) and frost.verifying_share(r._threshold_share) == verifying[2]

    foreign = replica(2, group_key, verifying, share_loader(files[1]))        # validator 1's share file
    assert not take_share(foreign) and foreign._threshold_share is None
    missing = replica(2, group_key, verifying, share_loader(files[2]), epoch=2)   # no share of epoch 2
    assert not take_share(missing) and missing._threshold_share is None
    outside = replica(2, group_key, verifying, share_loader(files[2]), member=False)
    assert not take_share(outside) and outside._threshold_share is None
    no_key = replica(2, None, (), share_loader(files[2]))             # the new set has no group key
    assert not take_share(no_key) and no_key._threshold_share is None
    (tmp_path / "validator3.epoch1.share").write_text("not hex\n")
    unreadable = replica(3, group_key, verifying, share_loader(files[3]))
    assert not take_share(unreadable) and unreadable._threshold_share is None
