"""The site's accounts file is changed by two processes at once, the ``ledgerlink up`` process (new device
accounts, password re-sets, bans followed) and the directory (pair grants): every change is made under
one inter-process lock and written through a rename, so neither loses the other's changes, and a password
re-set keeps the account's pair grants."""

from __future__ import annotations

import json
import subprocess
import sys
import time

from ledgerlink.protocol import peer_session as ps
from ledgerlink.tools.broker_access import SiteAccess, device_username, password_matches
from ledgerlink.tools.mqtt_acl import Access
from ledgerlink.tools.pair_access import PairAccess

SITE = "lk"
HUB = bytes([0xAA]) * 16
PARTNERS = [bytes([1, i]) + bytes(14) for i in range(40)]
NEW_DEVICES = [bytes([2, i]) + bytes(14) for i in range(40)]

WRITER = """
import sys, time
from pathlib import Path
from ledgerlink.tools.broker_access import SiteAccess
from ledgerlink.tools.pair_access import PairAccess

folder, role, go = sys.argv[1], sys.argv[2], Path(sys.argv[3])
access = SiteAccess(folder, %r)
partners = [bytes([1, i]) + bytes(14) for i in range(40)]
news = [bytes([2, i]) + bytes(14) for i in range(40)]
hub = bytes([0xAA]) * 16
while not go.exists():
    time.sleep(0.001)
if role == "directory":
    pairs = PairAccess(access)
    for p in partners:
        assert pairs.grant(hub, p)
else:
    for i, d in enumerate(news):
        access.add_device(d)
        access.add_device(hub if i %% 2 else partners[i], rotate=True)     # password re-sets
""" % SITE


def test_a_password_reset_keeps_the_pair_grants(tmp_path):
    access = SiteAccess(tmp_path / "broker", SITE)
    for dev in (HUB, PARTNERS[0]):
        access.add_device(dev)
    assert PairAccess(access).grant(HUB, PARTNERS[0])
    old = access.login(device_username(HUB))
    new = access.add_device(HUB, rotate=True)
    assert new["password"] != old["password"]
    assert PairAccess(access).pairs_of(HUB) == [PARTNERS[0]]
    acl = Access(access.accounts_path)
    assert acl.may_send(device_username(HUB), ps.pair_topic(SITE, HUB, PARTNERS[0]))


def test_two_processes_writing_the_accounts_at_once_lose_nothing(tmp_path):
    folder = tmp_path / "broker"
    access = SiteAccess(folder, SITE)
    access.add_many([(device_username(d), "device", d, None) for d in [HUB] + PARTNERS])
    go = tmp_path / "go"
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(folder), role, str(go)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
             for role in ("directory", "up")]
    time.sleep(0.5)                                    # both interpreters are up and waiting
    go.write_text("")
    for p in procs:
        out, _ = p.communicate(timeout=120)
        assert p.returncode == 0, out.decode()
    accounts = access.load()
    missing = [d.hex() for d in NEW_DEVICES if device_username(d) not in accounts]
    assert missing == [], "device accounts lost: %s" % missing
    assert sorted(accounts[device_username(HUB)].get("pairs", [])) == sorted(p.hex() for p in PARTNERS)
    lost = [p.hex() for p in PARTNERS if accounts[device_username(p)].get("pairs") != [HUB.hex()]]
    assert lost == [], "pair grants lost: %s" % lost
    for d in [HUB] + PARTNERS + NEW_DEVICES:             # every credentials file matches its account
        login = access.login(device_username(d))
        assert password_matches(accounts[login["username"]], login["password"]), login["username"]
    assert json.loads(access.accounts_path.read_text())["site"] == SITE
