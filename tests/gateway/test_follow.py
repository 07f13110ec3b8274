"""The gateway follows committed blocks: a ban (or unban, key rotation, registration) drops the device's
cached record at once, a proof from before the block is not taken, and a block whose transactions do not
match its certified header, or whose header lacks a quorum, changes nothing."""

from __future__ import annotations

from ledgerlink.gateway import checks as c
from tests.gateway.test_checks import CRYPTO, NOW, Env, reading, refused, up


def accepted(e: Env, name: str, seq: int) -> None:
    assert isinstance(e.one(up(e.net[name].id), reading(e.net, name, seq)), c.Accept)


def block(e: Env, height: int | None = None) -> tuple:
    res = e.ledger.block(e.ledger.height if height is None else height)
    return res["certified_header"], res["txs"]


def test_a_followed_ban_applies_to_the_next_frame():
    e = Env()
    dev = e.net["sensor"].id
    accepted(e, "sensor", 1)
    e.ledger.ban("sensor")
    accepted(e, "sensor", 2)                                    # the cached record still says active
    assert not [x for x in e.core.on_block(*block(e), NOW) if isinstance(x, c.Ignored)]
    assert dev not in e.core.registry and e.core.changed[dev] == e.ledger.height
    refused(e.one(up(dev), reading(e.net, "sensor", 3)), c.BANNED_DEVICE)
    accepted(e, "actuator", 1)                                  # others keep their cached records


def test_a_proof_from_before_the_block_is_refetched():
    e = Env()
    dev = e.net["sensor"].id
    stale = e.ledger.device_proof(dev)
    e.ledger.ban("sensor")
    e.core.on_block(*block(e), NOW)
    effects = e.core.on_registry_proof(stale, NOW, dev)
    assert any(isinstance(x, c.Ignored) and "predates" in x.reason for x in effects)
    assert [x.device_id for x in effects if isinstance(x, c.FetchRegistry)] == [dev]
    assert dev not in e.core.registry
    assert e.core.on_frame(up(dev), reading(e.net, "sensor", 1), NOW) == []        # held for the fetch
    [r] = [x for x in e.core.on_registry_proof(e.ledger.device_proof(dev), NOW, dev) if isinstance(x, c.Refuse)]
    refused(r, c.BANNED_DEVICE)


def test_blocks_that_do_not_check_change_nothing():
    e = Env()
    dev = e.net["sensor"].id
    accepted(e, "sensor", 1)
    e.ledger.ban("sensor")
    certified, txs = block(e)
    [r] = e.core.on_block(certified, [], NOW)                   # the ban hidden by a lying node
    assert isinstance(r, c.Ignored) and "tx root" in r.reason
    [r] = e.core.on_block(certified, txs + [b"extra"], NOW)
    assert isinstance(r, c.Ignored)
    few = [certified[0], [certified[1][0], certified[1][1], certified[1][2], certified[1][3][:1]]]
    [r] = e.core.on_block(few, txs, NOW)                        # one signature, not 2f+1
    assert isinstance(r, c.Ignored)
    [r] = e.core.on_block(certified, "not a list", NOW)
    assert isinstance(r, c.Ignored)
    assert dev in e.core.registry and dev not in e.core.changed
    accepted(e, "sensor", 2)


def test_unban_rotation_and_registration_blocks_touch_their_devices():
    e = Env()
    accepted(e, "sensor", 1)
    e.ledger.register("newcomer")
    e.core.on_block(*block(e), NOW)
    assert e.net["newcomer"].id in e.core.changed and e.net["sensor"].id in e.core.registry
    e.ledger.ban("sensor")
    tx = e.net.tx("admin", 4, {4: e.net["sensor"].id, 5: "cleared"}, time_ms=e.ledger.state.last_time)
    assert e.ledger.commit_block([tx], e.ledger.state.last_time)[0].ok
    e.core.on_block(*block(e), NOW)
    assert e.core.changed[e.net["sensor"].id] == e.ledger.height
    accepted(e, "sensor", 2)                                    # unbanned: a fresh proof says active


def test_a_gap_in_the_followed_blocks_drops_every_cached_record():
    e = Env()
    accepted(e, "sensor", 1)
    accepted(e, "actuator", 1)
    old = e.ledger.device_proof(e.net["sensor"].id)
    e.ledger.ban("sensor")
    assert isinstance(e.core.on_gap(b"\x00", NOW)[0], c.Ignored) and e.core.registry     # must verify
    e.core.on_gap(e.ledger.latest()["certified_header"], NOW)
    assert not e.core.registry
    effects = e.core.on_registry_proof(old, NOW, e.net["sensor"].id)
    assert any(isinstance(x, c.FetchRegistry) for x in effects) and not e.core.registry
    e.core.fetching.clear()
    refused(e.one(up(e.net["sensor"].id), reading(e.net, "sensor", 2)), c.BANNED_DEVICE)
    accepted(e, "actuator", 2)


def test_check_block_is_the_check_of_on_block():
    e = Env()
    e.ledger.ban("sensor")
    certified, txs = block(e)
    assert e.core.check_block(certified, txs).height == e.ledger.height
    for bad in ([], txs + [b"x"]):
        try:
            e.core.check_block(certified, bad)
        except ValueError:
            pass
        else:
            raise AssertionError("a block whose transactions do not match its header was taken")
    # the block follower's check leaves the header verified for on_block: no quorum signature is checked twice
    calls = []
    verify = e.core.crypto.verify
    e.core.crypto = type("Counting", (), {"verify": lambda self, *a: calls.append(1) or verify(*a),
                                          "__getattr__": lambda self, n: getattr(CRYPTO, n)})()
    e.ledger.ban("actuator")
    certified, txs = block(e)
    e.core.check_block(certified, txs)
    checked = len(calls)
    e.core.on_block(certified, txs, NOW)
    assert checked >= 3 and len(calls) == checked


def test_changes_are_remembered_only_as_far_back_as_proofs_are_taken():
    e = Env(c.Limits(max_proof_lag=2))
    e.ledger.ban("sensor")
    e.core.on_block(*block(e), NOW)
    for _ in range(3):
        e.ledger.register("filler%d" % e.ledger.height)
        e.core.on_block(*block(e), NOW)
    assert e.net["sensor"].id not in e.core.changed and len(e.core.changed) <= 3
