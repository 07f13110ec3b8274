"""Attacks by clients on the site's broker, on the live stack, against mosquitto and the embedded broker.

Each attack is refused by the broker (CONNACK, SUBACK or PUBACK 0x87, or nothing delivered) and a good
device is still served (its readings get receipts that verify). The gateway's log shows it was never
disconnected by an attacker.
"""

from __future__ import annotations

import hashlib
import re
import time

from ledgerlink.core import cbor
from ledgerlink.tools.broker_access import ROLE_CONTROLLER
from tests.access.conftest import NOT_AUTHORIZED, SITE, Client, Dev, now_ms


def _gateway_connects(stack) -> int:
    return len(re.findall(r"MQTT connected to", (stack.data_dir / "gateway.log").read_text()))


def test_anonymous_and_wrong_password_refused(stack, register):
    anon = Client(stack, "anon-reader")
    assert not anon.accepted and anon.code in (0x86, NOT_AUTHORIZED), hex(anon.code)
    anon.close()
    [dev] = register(1)
    wrong = Client(stack, dev.username, {"username": dev.username, "password": "guess"})
    assert not wrong.accepted
    wrong.close()


def test_device_reads_only_its_own_topics(stack, register):
    victim, spy = register(2)
    spy_c = spy.client()
    assert spy_c.subscribe(victim.core.down_topic) == NOT_AUTHORIZED
    assert spy_c.subscribe("#") == NOT_AUTHORIZED
    assert spy_c.subscribe("ll/%s/dev/+/down" % SITE) == NOT_AUTHORIZED
    assert spy_c.subscribe("ll/%s/verified/+" % SITE) == NOT_AUTHORIZED
    assert spy_c.subscribe("ll/%s/dev/%s/up" % (SITE, victim.id.hex())) == NOT_AUTHORIZED
    victim_c = victim.client()
    victim.served(victim_c, 2)                                   # its receipts went to its own down topic
    assert spy_c.drain(0.3) == []
    assert spy_c.publish(victim.core.up_topic, spy.core.reading({"x": 1}, now_ms()).payload) == NOT_AUTHORIZED
    for c in (spy_c, victim_c):
        c.close()


def test_device_cannot_join_the_gateways_group(stack, register):
    thief, good = register(2)
    thief_c = thief.client()
    for level in ("up", "session", "reg"):
        assert thief_c.subscribe("$share/ll-gw-%s/ll/%s/dev/+/%s" % (SITE, SITE, level)) == NOT_AUTHORIZED
    good_c = good.client()
    good.served(good_c, 20)                                      # none of the 20 was dealt to the thief
    assert thief_c.drain(0.2) == []
    for c in (thief_c, good_c):
        c.close()


def test_gateway_client_id_cannot_be_taken(stack, register):
    [dev] = register(1)
    before = _gateway_connects(stack)
    gw_id = "ll-gw-%s-1" % SITE
    for login in (None, {"username": gw_id, "password": "guess"}, dev.login(),
                  {"username": dev.username, "password": dev.login()["password"]}):
        c = Client(stack, gw_id, login)
        assert not c.accepted, "connected as %s with %r" % (gw_id, login and login["username"])
        c.close()
    time.sleep(0.3)
    assert _gateway_connects(stack) == before                    # the gateway was never kicked off
    c = dev.client()
    dev.served(c)
    c.close()


def test_forged_verified_reading_and_retained_header_refused(stack, register):
    forger, reader = register(2)
    consumer = Client(stack, "ll-app-%s" % SITE, stack.consumer_login())
    assert consumer.accepted
    assert consumer.subscribe("ll/%s/verified/+" % SITE) == 1
    forger_c = forger.client()
    fake = cbor.dumps({1: forger.id, 2: 1, 3: now_ms(), 4: {"t": 99}, 5: hashlib.sha256(b"x").digest(),
                       6: stack.gateway_id.hex()})
    assert forger_c.publish("ll/%s/verified/%s" % (SITE, forger.id.hex()), fake) == NOT_AUTHORIZED
    assert forger_c.publish("ll/%s/ledger/header" % SITE, b"junk", retain=True) == NOT_AUTHORIZED
    assert [m for m in consumer.drain(0.3) if m[1] == fake] == []
    reader_c = reader.client()
    reader.served(reader_c)                                      # a batch anchored: a header is retained
    assert reader_c.subscribe("ll/%s/ledger/header" % SITE) == 1
    headers = [p for t, p, _ in reader_c.drain(1.0) if t.endswith("/ledger/header")]
    assert headers and b"junk" not in headers
    cbor.loads(headers[-1])
    for c in (consumer, forger_c, reader_c):
        c.close()


def test_consumer_reads_verified_only(stack, register):
    [dev] = register(1)
    consumer = Client(stack, "ll-app-%s" % SITE, stack.consumer_login())
    for topic in ("#", dev.core.down_topic, "ll/%s/dev/+/up" % SITE, "ll/%s/ledger/header" % SITE):
        assert consumer.subscribe(topic) == NOT_AUTHORIZED, topic
    assert consumer.publish(dev.core.up_topic, b"x") == NOT_AUTHORIZED
    consumer.close()


def test_banned_device_is_cut_off_within_a_second(stack, register):
    banned, good = register(2)
    c = banned.client()
    t0 = time.monotonic()
    stack.ban(banned.id, "access test")
    committed = time.monotonic()
    assert c.disconnected.wait(1.0)
    cut = time.monotonic()
    print("ban: tx committed in %.0f ms, connection ended %.0f ms after the commit"
          % ((committed - t0) * 1000, (cut - committed) * 1000))
    c.close()
    again = Client(stack, banned.username, banned.login())
    assert not again.accepted
    again.close()
    gc = good.client()
    good.served(gc)
    gc.close()


def test_only_a_controller_publishes_commands(stack, register):
    target, device = register(2)
    controller = Dev(stack, role=ROLE_CONTROLLER)
    stack.register([controller.registration()])
    target_c = target.client()
    assert target_c.subscribe("ll/%s/dev/%s/cmd" % (SITE, target.id.hex())) == 1
    device_c, controller_c = device.client(), controller.client()
    cmd_topic = "ll/%s/dev/%s/cmd" % (SITE, target.id.hex())
    assert device_c.publish(cmd_topic, b"from a device") == NOT_AUTHORIZED
    assert controller_c.publish(cmd_topic, b"from the controller") == 0
    got = [p for t, p, _ in target_c.drain(1.0) if t == cmd_topic]
    assert got == [b"from the controller"]
    for c in (target_c, device_c, controller_c):
        c.close()


def test_gateway_account_reads_only_its_sites_group(stack, register):
    """A gateway account (a second gateway process's, made here) receives device topics only through its
    site's shared group, reads nothing else and cannot publish as a device or for another site."""
    login = stack.access.add("ll-gw-%s-9" % SITE, "gateway")
    gw = Client(stack, login["username"], login)
    assert gw.accepted
    [dev] = register(1)
    for topic in ("#", "ll/%s/dev/+/up" % SITE, dev.core.up_topic, "ll/%s/dev/+/down" % SITE,
                  "ll/%s/verified/+" % SITE, "ll/%s/ledger/header" % SITE, "$share/ll-gw-other/ll/other/dev/+/up",
                  "$share/ll-gw-%s/ll/other/dev/+/up" % SITE, "$share/spy/ll/%s/dev/+/up" % SITE):
        assert gw.subscribe(topic) == NOT_AUTHORIZED, topic
    assert gw.publish(dev.core.up_topic, dev.core.reading({"x": 1}, now_ms()).payload) == NOT_AUTHORIZED
    assert gw.publish("ll/other/verified/%s" % dev.id.hex(), b"x") == NOT_AUTHORIZED
    assert gw.drain(0.3) == []
    gw.close()
    c = dev.client()
    dev.served(c)
    c.close()


def test_flipped_signature_copy_sent_first_cannot_pre_empt_the_device(stack, register):
    """From the broker's position (an operator account), the (r, n - s) copy of a device's reading is
    published before the device's own: the gateway refuses it (bad signature, on the device's down topic)
    and the device's frame is stored and gets its receipt."""
    from ledgerlink.device.core import ReceiptResult
    from ledgerlink.gateway.checks import BAD_SIGNATURE
    from tests.gateway.test_malleability import malleated

    [dev] = register(1)
    c = dev.client()
    assert c.subscribe(dev.core.down_topic) == 1
    ops = Client(stack, "ops-malleate", stack.access.add("ops-malleate", "operator"))
    frame = dev.core.reading({"t": 5}, now_ms()).payload
    copy = malleated(frame)
    assert ops.publish(dev.core.up_topic, copy) == 0
    replies = []
    deadline = time.monotonic() + 15
    while not any(r.get(1) == hashlib.sha256(copy).digest() for r in replies) and time.monotonic() < deadline:
        replies += [cbor.loads(p) for _, p, _ in c.drain(0.2)]
    about_copy = [r for r in replies if r.get(1) == hashlib.sha256(copy).digest()]
    assert about_copy and all(r[0] == 2 and r[2] == BAD_SIGNATURE for r in about_copy), about_copy   # refused only
    assert c.publish(dev.core.up_topic, frame) == 0
    receipt = None
    while receipt is None and time.monotonic() < deadline + 15:
        for _, payload, _ in c.drain(0.2):
            res = dev.core.handle_down(payload, now_ms())
            if isinstance(res, ReceiptResult) and res.frame_hash == hashlib.sha256(frame).digest():
                receipt = res
    assert receipt is not None and receipt.valid
    for cl in (ops, c):
        cl.close()
