"""Accounts and ACLs in the embedded MQTT broker, from a site's ``accounts.json`` (``tools.broker_access``).

The same rules mosquitto's dynamic security plugin gets: no anonymous client; the password checked
against the account's PBKDF2-SHA512 hash; the client id must be the username (an empty one is assigned
the username), so nobody takes over another account's session (the shared anonymous account's is
``anon-`` and 16 hex digits, which no username is); a PUBLISH needs a ``send`` rule
(else MQTT 5 PUBACK 0x87 and the message is dropped), a SUBSCRIBE a ``subscribe`` rule that covers the
whole filter (else SUBACK 0x87; a ``subscribe-name`` rule only a topic name it matches, no wildcard),
and every delivery a ``receive`` rule for the topic. The file is read
again when it changes (checked every ``RELOAD_S``; the file's mtime then goes into ``accounts.json.applied``,
which ``broker_access`` waits for), and clients of accounts disabled or removed by then,
or whose password changed, are disconnected (0x98 administrative action).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ledgerlink.tools.broker_access import (ANON_ROLE, APPLIED_SUFFIX, RECEIVE, RELOAD_S, SEND, SUBSCRIBE, SUBSCRIBE_NAME,
                                           is_anon_client_id, password_matches, rules)

NOT_AUTHORIZED = 0x87
ANON_SESSIONS_KEPT = 100_000        # anonymous client ids remembered (the oldest then have no rules: refused)
ADMINISTRATIVE_ACTION = 0x98
__all__ = ["Access", "NOT_AUTHORIZED", "ADMINISTRATIVE_ACTION", "RELOAD_S", "covers", "topic_matches"]


def topic_matches(rule: str, topic: str) -> bool:
    """Whether topic name ``topic`` falls under filter ``rule`` (MQTT matching; ``$`` topics only by name)."""
    if topic.startswith("$") and rule[:1] in ("+", "#"):
        return False
    rl, tl = rule.split("/"), topic.split("/")
    for i, r in enumerate(rl):
        if r == "#":
            return True
        if i >= len(tl) or (r != "+" and r != tl[i]):
            return False
    return len(rl) == len(tl)


def covers(rule: str, filt: str) -> bool:
    """Whether every topic filter ``filt`` can match also matches ``rule`` (so ``#`` is covered only by ``#``)."""
    rl, fl = rule.split("/"), filt.split("/")
    for i, r in enumerate(rl):
        if r == "#":
            return True
        if i >= len(fl) or fl[i] == "#" or (r != "+" and (fl[i] == "+" or r != fl[i])):
            return False
    return len(rl) == len(fl)


class Access:
    """The accounts of one site's ``accounts.json``, reloaded when the file changes."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.site = ""
        self.accounts: dict[str, dict[str, Any]] = {}
        self.rules: dict[str, list[tuple[str, str]]] = {}
        self._receive_cache: dict[tuple[str, str], bool] = {}
        self.anon_clients: dict[str, str] = {}          # client id of an anonymous session -> its account
        self._stamp: tuple[int, int] | None = None
        self.reload()

    def reload(self) -> list[str]:
        """Read the file when it changed; the usernames whose connections must end (disabled, removed or
        given a new password)."""
        st = os.stat(self.path)
        stamp = (st.st_mtime_ns, st.st_ino)
        if stamp == self._stamp:
            return []
        data = json.loads(self.path.read_text())
        accounts = dict(data["accounts"])
        site = data["site"]
        gone = [u for u, a in self.accounts.items()
                if u not in accounts or accounts[u].get("disabled") or accounts[u].get("hash") != a.get("hash")]
        gone += [cid for cid, u in self.anon_clients.items() if u in gone]
        self.site, self.accounts, self._stamp = site, accounts, stamp
        self.rules = {u: rules(a.get("site", site), u, a["role"], a.get("device"), a.get("pairs", ()))
                      for u, a in accounts.items()}
        self._receive_cache.clear()
        applied = self.path.with_name(self.path.name + APPLIED_SUFFIX)
        tmp = applied.with_name(applied.name + ".tmp")
        tmp.write_text(str(stamp[0]))
        os.replace(tmp, applied)
        return gone

    def check_connect(self, client_id: str, username: str | None, password: bytes | None) -> str | None:
        """The client id to use, or None when the connection is refused."""
        a = self.accounts.get(username or "")
        if a is None or a.get("disabled") or not password_matches(a, password):
            return None
        if a.get("role") == ANON_ROLE:                  # shared by anonymous devices: a fresh id per session
            if not is_anon_client_id(client_id):
                return None
            if len(self.anon_clients) >= ANON_SESSIONS_KEPT:
                del self.anon_clients[next(iter(self.anon_clients))]
            self.anon_clients[client_id] = username or ""
            return client_id
        if client_id not in ("", username):
            return None
        return username

    def _rules(self, client_id: str) -> list[tuple[str, str]]:
        """The rules of the account a client logged in with (its client id is its username, or an
        anonymous session's id)."""
        return self.rules.get(self.anon_clients.get(client_id, client_id), [])

    def may_send(self, username: str, topic: str) -> bool:
        return any(kind == SEND and topic_matches(rule, topic) for kind, rule in self._rules(username))

    def may_subscribe(self, username: str, filt: str) -> bool:
        named = not any(c in filt for c in "+#$")
        return any((kind == SUBSCRIBE and covers(rule, filt)) or (kind == SUBSCRIBE_NAME and named
                                                                 and topic_matches(rule, filt))
                   for kind, rule in self._rules(username))

    def may_receive(self, username: str, topic: str) -> bool:
        key = (username, topic)
        ok = self._receive_cache.get(key)
        if ok is None:
            if len(self._receive_cache) > 100_000:
                self._receive_cache.clear()
            ok = self._receive_cache[key] = any(kind == RECEIVE and topic_matches(rule, topic)
                                                for kind, rule in self._rules(username))
        return ok
