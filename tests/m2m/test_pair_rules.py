"""Pair-topic rules as the embedded broker enforces them (``mqtt_acl.Access`` reads the same accounts file
``pair_access`` changes): only the two devices of a granted pair may send and receive on its topics, a
third device may subscribe only to its own inbox, and a revoke takes both directions away."""

from __future__ import annotations

from ledgerlink.protocol import peer_session as ps
from ledgerlink.tools.broker_access import SiteAccess, device_username
from ledgerlink.tools.mqtt_acl import Access
from ledgerlink.tools.pair_access import PairAccess, directory_username

A, B, E = bytes([1]) * 16, bytes([2]) * 16, bytes([3]) * 16


def test_only_a_granted_pair_sends_and_receives_on_its_topics(tmp_path):
    site = SiteAccess(tmp_path / "broker", "pr")
    for dev in (A, B, E):
        site.add_device(dev)
    pairs = PairAccess(site)
    pairs.directory_login()
    ua, ub, ue = (device_username(d) for d in (A, B, E))
    ab, ba, eb = ps.pair_topic("pr", A, B), ps.pair_topic("pr", B, A), ps.pair_topic("pr", E, B)
    acl = Access(site.accounts_path)
    assert not acl.may_send(ua, ab) and not acl.may_receive(ub, ab)          # nothing before the grant
    assert acl.may_subscribe(ub, ps.inbox_filter("pr", B))
    assert pairs.grant(A, B)
    acl.reload()
    assert acl.may_send(ua, ab) and acl.may_receive(ub, ab) and acl.may_send(ub, ba) and acl.may_receive(ua, ba)
    assert not acl.may_send(ub, ab) and not acl.may_receive(ua, ab)          # each direction its own sender
    for topic in (ab, ba, eb):
        assert not acl.may_send(ue, topic) and not acl.may_receive(ue, topic)
    for filt in (ab, ps.inbox_filter("pr", B), "ll/pr/pair/#", "ll/pr/pair/+/+"):
        assert not acl.may_subscribe(ue, filt)
    assert not acl.may_receive(ub, eb)
    d = directory_username("pr")
    assert acl.may_subscribe(d, "ll/pr/dev/+/dir") and acl.may_send(d, "ll/pr/dev/%s/dira" % A.hex())
    assert not acl.may_send(d, ab) and not acl.may_receive(d, ab)            # the directory never reads pairs
    assert pairs.revoke_device(B) == [A]
    acl.reload()
    for user, topic in ((ua, ab), (ub, ba)):
        assert not acl.may_send(user, topic)
    assert not acl.may_receive(ub, ab) and not acl.may_receive(ua, ba)
    assert not pairs.grant(A, bytes(16))                 # no account: no pair
