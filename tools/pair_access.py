"""Pair topics on the site's broker: which two devices may exchange peer frames, and the directory's account.

A device D may always subscribe to its inbox filter ``ll/S/pair/+/D``, publish directory requests on
``ll/S/dev/D/dir`` and receive answers on ``ll/S/dev/D/dira``. It may publish on ``ll/S/pair/D/P`` and
receive from ``ll/S/pair/P/D`` only for the devices P its account lists under ``pairs``, which the
directory grants (``grant``) when D asks for a partner that the ledger shows registered and active, and
takes away (``revoke_device``) when the ledger shows either one banned. So no third account may send or
read on a pair's topics, and neither may a banned device's partner after the ban.

Both brokers get the same rules from ``broker_access.rules``: the embedded one reads ``accounts.json``
again (``SiteAccess._wait_applied``); a mosquitto gets ``addRoleACL`` / ``removeRoleACL`` commands for
the two roles (so nobody is disconnected and the change holds at the next delivery), sent as the
directory's own broker admin (``DIRECTORY_ADMIN``, so these never take over the site admin's client id).
Tested against real mosquitto in tests/m2m/test_peer_devices.py and with the embedded broker's
rules in tests/m2m/test_pair_rules.py.
"""

from __future__ import annotations

from typing import Any, Iterable

from ledgerlink.protocol.discovery import answer_topic, dir_topic
from ledgerlink.protocol.peer_session import inbox_filter, pair_topic
from ledgerlink.tools.broker_access import (RECEIVE, RUNTIME_FILE, SEND, SUBSCRIBE, AccessError, SiteAccess,
                                            _dynsec_acls, under_accounts_lock, device_username, dynsec_command)

DIRECTORY_ADMIN = "ll-broker-admin-dir"
RETRIES = 3


def directory_username(site: str) -> str:
    return "ll-dir-%s" % site


def peer_rules(site: str, device_hex: str | None, pairs: Iterable[str]) -> list[tuple[str, str]]:
    """A device's directory and pair-topic allowances (``device_hex`` its id, ``pairs`` its partners' ids)."""
    if device_hex is None:
        return []
    dev = bytes.fromhex(device_hex)
    out = [(SEND, dir_topic(site, dev)), (SUBSCRIBE, answer_topic(site, dev)), (RECEIVE, answer_topic(site, dev)),
           (SUBSCRIBE, inbox_filter(site, dev))]
    for peer_hex in pairs:
        peer = bytes.fromhex(peer_hex)
        out += [(SEND, pair_topic(site, dev, peer)), (RECEIVE, pair_topic(site, peer, dev))]
    return out


def directory_rules(site: str) -> list[tuple[str, str]]:
    """The directory reads every device's requests and answers each on its own answer topic."""
    requests = "ll/%s/dev/+/dir" % site
    return [(SUBSCRIBE, requests), (RECEIVE, requests), (SEND, "ll/%s/dev/+/dira" % site)]


class PairAccess:
    """Grants and revokes pair topics in a site's accounts (under the accounts' inter-process lock, so the
    ``ledgerlink up`` process changing accounts at the same time loses nothing and nor does this)."""

    def __init__(self, access: SiteAccess) -> None:
        self.access = access

    def directory_login(self) -> dict[str, str]:
        """The directory's MQTT login and its broker admin's (made on first use)."""
        self.access.add(DIRECTORY_ADMIN, "broker-admin")
        return self.access.add(directory_username(self.access.site), "directory")

    def pairs_of(self, dev: bytes) -> list[bytes]:
        a = self.access.load().get(device_username(dev)) or {}
        return [bytes.fromhex(h) for h in a.get("pairs", ())]

    @under_accounts_lock
    def grant(self, a: bytes, b: bytes) -> bool:
        """Let devices ``a`` and ``b`` use their pair topics; False when either has no account or is disabled."""
        accounts = self.access.load()
        ua, ub = device_username(a), device_username(b)
        if any(u not in accounts or accounts[u].get("disabled") for u in (ua, ub)):
            return False
        changes = []
        for user, own, peer in ((ua, a, b), (ub, b, a)):
            pairs = accounts[user].setdefault("pairs", [])
            if peer.hex() not in pairs:
                pairs.append(peer.hex())
                changes.append(("addRoleACL", user, own, peer))
        if changes:
            self.access._save(accounts)
            self._apply(changes)
        return True

    @under_accounts_lock
    def revoke_device(self, dev: bytes) -> list[bytes]:
        """Take away every pair of ``dev``; the partners it had."""
        accounts = self.access.load()
        user = device_username(dev)
        mine = (accounts.get(user) or {}).get("pairs", [])
        partners, changes = [], []
        for peer_hex in list(mine):
            peer = bytes.fromhex(peer_hex)
            partners.append(peer)
            changes.append(("removeRoleACL", user, dev, peer))
            other = accounts.get(device_username(peer))
            if other is not None and dev.hex() in other.get("pairs", []):
                other["pairs"].remove(dev.hex())
                changes.append(("removeRoleACL", device_username(peer), peer, dev))
        if user in accounts:
            accounts[user]["pairs"] = []
        if changes:
            self.access._save(accounts)
            self._apply(changes)
        return partners

    def _apply(self, changes: list[tuple[str, str, bytes, bytes]]) -> None:
        """Make a running broker follow the changed pairs (embedded: it rereads the file)."""
        import json

        try:
            runtime = json.loads((self.access.folder / RUNTIME_FILE).read_text())
        except (FileNotFoundError, ValueError):
            return
        if runtime.get("kind") == "embedded":
            self.access._wait_applied()
            return
        if runtime.get("kind") != "mosquitto":
            return
        commands: list[dict[str, Any]] = []
        for op, user, own, peer in changes:
            for acl in _dynsec_acls([(SEND, pair_topic(self.access.site, own, peer)),
                                     (RECEIVE, pair_topic(self.access.site, peer, own))]):
                cmd = {"command": op, "rolename": user, "acltype": acl["acltype"], "topic": acl["topic"]}
                if op == "addRoleACL":
                    cmd.update(allow=True, priority=0)
                commands.append(cmd)
        login = self.access.login(DIRECTORY_ADMIN)
        for attempt in range(RETRIES):
            answers = dynsec_command(runtime["host"], int(runtime["port"]), login, commands,
                                     tls_ca=runtime.get("tls_ca"))
            if len(answers) == len(commands):
                return
        raise AccessError("mosquitto answered %d of %d pair ACL changes" % (len(answers), len(commands)))
