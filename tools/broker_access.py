"""Who may do what on a site's MQTT broker: accounts, per-role ACLs and how each broker enforces them.

Protects against clients on the broker's network: without an account nobody connects (anonymous off);
each account is bound to one client id (so nobody can take over the gateway's session or kick it off
without its password), and each role may publish, subscribe and receive only its own topics:

==============  =========================================  ==============================================
role            publish                                    subscribe and receive
==============  =========================================  ==============================================
device          ``ll/S/dev/D/up``, ``reg``, ``session``     ``ll/S/dev/D/down``, ``ll/S/dev/D/cmd``,
                                                           ``ll/S/ledger/header``
controller      as device, and ``ll/S/dev/+/cmd``          as device
gateway         ``ll/S/dev/+/down``, ``ll/S/verified/+``,  ``$share/ll-gw-S/ll/S/dev/+/up``, ``session``,
                ``ll/S/ledger/header``                     ``reg`` (the shared group only)
consumer        nothing                                    ``ll/S/verified/+``
operator        ``ll/S/#``                                 ``ll/S/#`` (no ``$share`` group; made only on
                                                           request, for diagnosis)
broker-admin    ``$CONTROL/dynamic-security/#``            its responses (mosquitto only)
anon            ``ll/S/anon/req``, ``ll/S/anon/up/+``      ``ll/S/anon/rsp/T`` for one named T only (a
                                                           filter with a wildcard is refused)
anon-fog        ``ll/S/anon/rsp/+``, ``ll/S/anon/cloud``   ``$share/ll-anon-S/ll/S/anon/req``
anon-cloud      nothing                                    ``ll/S/anon/cloud``, ``ll/S/anon/up/+``
==============  =========================================  ==============================================

(S the site, D the device id in hex. Receipt requests on ``ll/S/dev/D/ask`` go as ``up`` does: the
device publishes, the gateways' shared group receives.) The site's accounts live in ``accounts.json`` in the broker
folder (``data_dir/broker``, mode 0700; files 0600): role, PBKDF2-SHA512 hash of the password and
whether the account is disabled. Passwords are 24 random bytes (base64url), so the hash's iteration
count (mosquitto's 101) does not carry their strength. Each account's client login is written once to
``credentials/<username>.json`` (0600) for the client that uses it; the password itself is kept nowhere else.
Usernames: ``ll-<device id hex>`` for devices and controllers (the client id the device SDKs already
use), ``ll-gw-<site>-<i>`` for gateway processes, ``ll-app-<site>`` for the consumer.

Anonymous sessions (docs/protocol.md), only when the site turns them on (``anon_accounts``; ``ledgerlink
up``'s ``anon.enabled``): one account ``ll-anon-<site>`` shared by every anonymous device, not bound to a
client id, so a device connects for each session with a fresh random one (``anon-`` and 16 hex digits, which
the embedded broker requires) and its login names no device; ``ll-anonfog-<site>-<i>`` for each gateway
process's fog service and ``ll-anoncloud-<site>`` for the cloud side. A session's answer topic
``ll/S/anon/rsp/{hex(reply tag)}`` is named by the 8-byte tag that travels only inside the request's ECIES
ciphertext, and the anonymous account may subscribe only to a topic name, never a filter with a wildcard
(mosquitto: a ``subscribeLiteral`` deny of the wildcard filter beside the pattern allow; embedded: the rule
kind ``subscribe-name``), so another anonymous device cannot read or even find that answer (and it is
sealed to the requester's ECIES key besides); registered devices' accounts have no rule on ``ll/S/anon``.
Not enforced on mosquitto 2.0: the shared account's client id is free, so a holder of the anonymous login
can connect with a client id in use (another account's) and mosquitto ends that client's connection; it
reads nothing of that account's topics (its ACLs stay those of the anonymous account) and the client takes
its id back when it reconnects. The embedded broker refuses such a client id.

Enforcement:

- mosquitto (2.0, Debian 12's 2.0.11): the dynamic security plugin. Chosen over password and ACL files
  because with the files mosquitto 2.0 accepts every SUBSCRIBE and checks only at delivery: a device
  that joined the gateway's shared group was dealt half of the site's frames and mosquitto dropped them
  (acknowledged to the device, never delivered; measured 10 of 20). The plugin refuses such a SUBSCRIBE
  (0x87), pins each account's client id, and ``disableClient`` disconnects that one client at once (a
  SIGHUP reload of password files disconnects every client, the gateway too). ``mosquitto_lines``
  writes the plugin's config from ``accounts.json`` at each start; changes while it runs go to it as
  ``$CONTROL/dynamic-security/v1`` commands from the ``ll-broker-admin`` account (``apply_live``).
- an external mosquitto (``ledgerlink up``'s ``broker.external``) with the same plugin: given the login
  of one of its admins (``broker.admin_login``; over TLS checked against ``broker.tls_ca`` when given),
  ``sync_external`` reads the broker's clients and roles at start and sends only what differs from
  ``accounts.json`` (so a restart leaves connected clients alone, and the plugin, which saves its file
  after every changing command, does not save 600 times for 300 accounts), and ``apply_live`` sends later
  changes; ``up`` names the broker settings that still let more through (anonymous clients, a default
  that allows). The broker never shows a password: the hash of each account's password when it was last
  set there is kept in ``external.json`` (0600), so a password changed while ``up`` was stopped is set
  again (the first start after an upgrade sets each once). Without an admin login ``up`` prints
  ``external_advice``.
- the embedded broker (``ledgerlink.tools.mqtt_broker --accounts FILE``): ``ledgerlink.tools.mqtt_acl``
  reads the same ``accounts.json`` with the same rules, and reads it again within ``RELOAD_S`` of a
  change, disconnecting the clients of disabled accounts.

A device's password follows its key: when the ledger records a rotation of the device's key
(``tx-rotate-key``, signed by the old key with the new key's proof of possession), ``follow_record``
gives the account the password ``key_password(site login key, new device key)``:
HKDF-SHA256 over the ECDH secret of the new device key and the site's broker-login key
(``data_dir/broker/login.key``, 0600; its public key goes to the board with its login), for the account's
username (``ledgerlink.protocol.broker_login``, portable). The device computes the same password with the
same code and its new private key (``device_login`` on CPython, ``DeviceClient.key_rotated`` on a board), so nothing
secret travels and no one else can: the broker and an eavesdropper see two public keys, and the old
key's holder cannot compute a password that needs the new private key. The old password stops working
at once (the account is replaced and its connection ended, as at a ban). Rejected alternatives: a random
password sent to the device would need a confidential channel to it that the site does not have; a
password derived from the public key alone would be known to everyone. The record comes with a proof
checked against the trusted validators (``proven_device_record``), so a lying ledger node cannot move
an account to a key of its choosing.

Also here: the site CA and the broker's TLS certificate (``site_tls``, ``client_certificate``,
``client_tls_context``), the dashboard's login token (``dashboard_token``) and owner-only files
(``private_dir`` 0700, files 0600). Tested in tests/access/ against both brokers on a live site.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import functools
import hashlib
import hmac
import json
import os
import secrets
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from ledgerlink.protocol import broker_login
from ledgerlink.protocol.codes import ROLE_CONTROLLER

ROLES = ("device", "controller", "gateway", "consumer", "operator", "broker-admin", "directory", "updates", "anon",
         "anon-fog", "anon-cloud")
ANON_ROLE = "anon"                      # the account shared by anonymous devices: no client id bound to it
ANON_ROLES = (ANON_ROLE, "anon-fog", "anon-cloud")
ANON_CLIENT_ID_PREFIX = "anon-"         # + 16 hex digits, fresh per session; no account's username starts so
PBKDF2_ITERATIONS = 101                 # mosquitto's own; the passwords are random, see the module docstring
PASSWORD_BYTES = broker_login.PASSWORD_BYTES
ADMIN_USER = "ll-broker-admin"
DYNSEC_PLUGIN_PATHS = ("/usr/lib/x86_64-linux-gnu/mosquitto_dynamic_security.so",
                       "/usr/lib/aarch64-linux-gnu/mosquitto_dynamic_security.so",
                       "/usr/lib/mosquitto_dynamic_security.so", "/usr/local/lib/mosquitto_dynamic_security.so")
DYNSEC_TOPIC = "$CONTROL/dynamic-security/v1"
DYNSEC_CHUNK = 64                       # commands per message to the plugin
ACCOUNTS_FILE = "accounts.json"
ACCOUNTS_LOCK_FILE = "accounts.lock"     # flock'ed by every process while it changes accounts.json
LOGIN_KEY_FILE = "login.key"            # the site's broker-login key: device passwords after a key rotation
SYNCED_FILE = "external.json"            # the password hash of each account when last set on an external broker
FOLLOWED_FILE = "followed.json"          # the ledger height whose bans and key rotations the accounts reflect
FOLLOW_BLOCKS_PER_CALL = 1000           # blocks read per follow call (a long catch-up does not stall the caller)
RUNTIME_FILE = "runtime.json"
DASHBOARD_TOKEN_FILE = "dashboard.token"
DYNSEC_FILE = "dynamic-security.json"
RELOAD_S = 0.2                          # the embedded broker looks at accounts.json this often
APPLIED_SUFFIX = ".applied"             # it writes the mtime of what it read to accounts.json.applied

SEND, RECEIVE, SUBSCRIBE = "send", "receive", "subscribe"
SUBSCRIBE_NAME = "subscribe-name"       # a subscription to one topic name the filter matches, no wildcard


class AccessError(Exception):
    """An account operation that cannot be done; the message says why."""


def device_username(device_id: bytes) -> str:
    return broker_login.username(device_id)


def gateway_username(site: str, index: int = 1) -> str:
    return "ll-gw-%s-%d" % (site, index)


def consumer_username(site: str) -> str:
    return "ll-app-%s" % site


def anon_username(site: str) -> str:
    """The broker account every anonymous device of ``site`` shares."""
    return "ll-anon-%s" % site


def anon_fog_username(site: str, index: int = 1) -> str:
    return "ll-anonfog-%s-%d" % (site, index)


def anon_cloud_username(site: str) -> str:
    return "ll-anoncloud-%s" % site


def anon_client_id(rng: Any = None) -> str:
    """A fresh client id for one anonymous session (``rng(n)``: n random bytes; default os.urandom)."""
    return ANON_CLIENT_ID_PREFIX + (rng or os.urandom)(8).hex()


def is_anon_client_id(client_id: str) -> bool:
    rest = client_id[len(ANON_CLIENT_ID_PREFIX):]
    return (client_id.startswith(ANON_CLIENT_ID_PREFIX) and len(rest) == 16
            and all(c in "0123456789abcdef" for c in rest))


def rules(site: str, username: str, role: str, device: str | None = None,
          pairs: Iterable[str] = ()) -> list[tuple[str, str]]:
    """The (kind, topic filter) allowances of one account: kind is send, receive or subscribe. ``pairs``: the
    devices (hex ids) a device may exchange peer frames with (``ledgerlink.tools.pair_access``)."""
    from ledgerlink.tools.pair_access import directory_rules, peer_rules

    base = "ll/%s" % site
    if role in ("device", "controller"):
        own = "%s/dev/%s" % (base, device)
        out = [(SEND, own + "/" + level) for level in ("up", "reg", "session", "ask", "upd")]
        for topic in (own + "/down", own + "/cmd", own + "/fw", base + "/ledger/header"):
            out += [(SUBSCRIBE, topic), (RECEIVE, topic)]
        if role == "controller":
            out.append((SEND, base + "/dev/+/cmd"))
        return out + peer_rules(site, device, pairs)
    if role == "gateway":
        out = [(SEND, base + "/dev/+/down"), (SEND, base + "/verified/+"), (SEND, base + "/ledger/header")]
        for level in ("up", "session", "reg", "ask"):
            out += [(SUBSCRIBE, "$share/ll-gw-%s/%s/dev/+/%s" % (site, base, level)),
                    (RECEIVE, "%s/dev/+/%s" % (base, level))]
        return out
    if role == "consumer":
        return [(SUBSCRIBE, base + "/verified/+"), (RECEIVE, base + "/verified/+")]
    if role == "operator":
        return [(SEND, base + "/#"), (SUBSCRIBE, base + "/#"), (RECEIVE, base + "/#")]
    if role == "directory":
        return directory_rules(site)
    if role == "updates":                       # the update publisher: offers and chunks to each device's fw
        return [(SEND, base + "/dev/+/fw"), (SUBSCRIBE, base + "/dev/+/upd"), (RECEIVE, base + "/dev/+/upd")]
    if role == "broker-admin":
        return [(SEND, DYNSEC_TOPIC), (SUBSCRIBE, DYNSEC_TOPIC + "/response"), (RECEIVE, DYNSEC_TOPIC + "/response")]
    anon = base + "/anon"
    if role == ANON_ROLE:
        return [(SEND, anon + "/req"), (SEND, anon + "/up/+"), (SUBSCRIBE_NAME, anon + "/rsp/+"),
                (RECEIVE, anon + "/rsp/+")]
    if role == "anon-fog":
        return [(SUBSCRIBE, "$share/ll-anon-%s/%s/req" % (site, anon)), (RECEIVE, anon + "/req"),
                (SEND, anon + "/rsp/+"), (SEND, anon + "/cloud")]
    if role == "anon-cloud":
        return [(SUBSCRIBE, anon + "/cloud"), (RECEIVE, anon + "/cloud"), (SUBSCRIBE, anon + "/up/+"),
                (RECEIVE, anon + "/up/+")]
    raise AccessError("unknown role %r (one of %s)" % (role, ", ".join(ROLES)))


def key_password(own_private: bytes, peer_public: bytes, username: str, backend: Any = "cpython") -> str:
    """The broker password of a device account under a device key (``ledgerlink.protocol.broker_login``, the
    code the device runs too): the site calls it with its login key and the device's public key, the device
    with its private key and the site's login key."""
    return broker_login.password(own_private, peer_public, username, backend)


def device_login(device_id: bytes, device_private: bytes, login_public: bytes,
                 backend: Any = "cpython") -> dict[str, str]:
    """What a device computes after a key rotation: its broker login under its new private key (its device
    id stays the one it registered with)."""
    return broker_login.login(device_id, device_private, login_public, backend)


def proven_device_record(ledger: Any, chain_id: str, validators: list[bytes], dev: bytes,
                         min_height: int = 0, group_key: bytes | None = None) -> dict[Any, Any] | None:
    """A device's ledger record (None when it has none), from ``ledger`` (a ``LedgerClient``) with its
    proof checked against the trusted ``validators`` under a header at ``min_height`` or later; AccessError
    when the answer does not verify (a lying or lagging node: the account stays as it is). ``group_key``:
    the set's FROST group key, when its headers name one."""
    from ledgerlink.core import cbor
    from ledgerlink.protocol import spv
    from ledgerlink.core.errors import LedgerlinkError
    from ledgerlink.ledger.state.codes import RecordKind
    from ledgerlink.ledger.state.encoding import state_key

    res = ledger.record(int(RecordKind.DEVICE), dev)
    try:
        header, key, value = spv.verify_record_proof(cbor.dumps(res["proof"]), chain_id, validators,
                                                     group_key=group_key)
        record = cbor.loads(value) if value is not None else None
    except (LedgerlinkError, KeyError, TypeError, ValueError) as exc:
        raise AccessError("the ledger's record of device %s does not verify: %s" % (dev.hex(), exc)) from None
    if key != state_key(RecordKind.DEVICE, dev) or header.height < min_height:
        raise AccessError("the ledger answered for device %s with another key or an older header (%d < %d)"
                          % (dev.hex(), header.height, min_height))
    if record is not None and not (isinstance(record, dict) and record.get(1) == dev
                                   and isinstance(record.get(2), bytes)):
        raise AccessError("the proven record of device %s is not a device record" % dev.hex())
    return record


def proven_block_txs(ledger: Any, chain_id: str, validators: list[bytes], height: int,
                     group_key: bytes | None = None) -> list[bytes]:
    """The transactions of block ``height``, from the first node (``ledger``'s own choice, then each node of
    its config) whose answer checks: a certified header of that height signed by the trusted
    ``validators`` and transactions that hash to its tx root. So a lying node can hide no ban or key
    rotation. AccessError when a node answered but none gave one that checks; when no node answered at
    all, the client's own error (``LedgerUnavailable``)."""
    from ledgerlink.core import cbor
    from ledgerlink.protocol import spv
    from ledgerlink.ledger.consensus.messages import tx_root

    asks = [lambda: ledger.block(height)]
    asks += [lambda i=i: ledger.request_to(i, "block", height=height) for i in range(len(ledger.config.nodes))]
    unanswered: list[Exception] = []
    for ask in asks:
        try:
            res = ask()
        except Exception as exc:  # noqa: BLE001 - this node does not answer: the next one is asked
            unanswered.append(exc)
            continue
        try:
            header = spv.verify_certified_header(cbor.dumps(res["certified_header"]), chain_id, validators,
                                                 group_key=group_key)
            txs = res["txs"]
            if (header.height == height and isinstance(txs, list) and all(type(tx) is bytes for tx in txs)
                    and tx_root(txs) == header.tx_root):
                return txs
        except Exception:  # noqa: BLE001 - this node lied or answered an error: the next one is asked
            continue
    if len(unanswered) == len(asks):
        raise unanswered[0]
    raise AccessError("no ledger node gave block %d in a form that checks" % height)


def hash_password(password: str, salt: bytes | None = None, iterations: int = PBKDF2_ITERATIONS) -> dict[str, Any]:
    salt = salt if salt is not None else secrets.token_bytes(12)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations)
    return {"salt": base64.b64encode(salt).decode(), "hash": base64.b64encode(digest).decode(),
            "iterations": iterations}


def password_matches(account: dict[str, Any], password: bytes | str | None) -> bool:
    """Whether ``password`` is the account's (constant-time compare of the PBKDF2 digests)."""
    if password is None:
        return False
    if isinstance(password, bytes):
        try:
            password = password.decode()
        except UnicodeDecodeError:
            return False
    try:
        salt = base64.b64decode(account["salt"])
        want = base64.b64decode(account["hash"])
        got = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, int(account["iterations"]))
    except (KeyError, ValueError, TypeError):
        return False
    return hmac.compare_digest(got, want)


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` (mode 0600) through a temporary file renamed into place."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def private_dir(path: Path) -> Path:
    """``path`` made (with parents) and set to mode 0700."""
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    return path


def private_log(path: Path) -> Any:
    """``path`` opened for appending, created with mode 0600 (a log may name devices and accounts)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.fchmod(fd, 0o600)
    return os.fdopen(fd, "ab")


def dashboard_token(data_dir: Path) -> str:
    """The dashboard's login token in ``data_dir/dashboard.token`` (made on first use, mode 0600)."""
    path = Path(data_dir) / DASHBOARD_TOKEN_FILE
    if not path.exists():
        write_private(path, secrets.token_urlsafe(PASSWORD_BYTES) + "\n")
    return path.read_text().strip()


def find_dynsec_plugin() -> str | None:
    for p in DYNSEC_PLUGIN_PATHS:
        if os.path.isfile(p):
            return p
    return None


_DYNSEC_KINDS = {SEND: "publishClientSend", RECEIVE: "publishClientReceive", SUBSCRIBE: "subscribePattern",
                 SUBSCRIBE_NAME: "subscribePattern"}


def _dynsec_acls(allowances: Iterable[tuple[str, str]]) -> list[dict[str, Any]]:
    """The plugin's ACL entries of ``rules``' (kind, topic filter) allowances. ``subscribe-name``: the
    pattern allowed and the filter itself (its only form with a wildcard the pattern covers) denied, which
    the plugin checks before the patterns."""
    out = []
    for kind, topic in allowances:
        out.append({"acltype": _DYNSEC_KINDS[kind], "topic": topic, "allow": True, "priority": 0})
        if kind == SUBSCRIBE_NAME:
            out.append({"acltype": "subscribeLiteral", "topic": topic, "allow": False, "priority": 0})
    return out


def _bound_client_id(username: str, account: dict[str, Any]) -> str | None:
    """The client id an account must use (its username), None for the shared anonymous account."""
    return None if account.get("role") == ANON_ROLE else username


def _dynsec_client(username: str, account: dict[str, Any], **fields: Any) -> dict[str, Any]:
    client = {"username": username, **fields, "roles": [{"rolename": username}]}
    clientid = _bound_client_id(username, account)
    if clientid is not None:
        client["clientid"] = clientid
    return client


def _acl_set(acls: Iterable[dict[str, Any]]) -> set[tuple[Any, Any, bool]]:
    return {(acl.get("acltype"), acl.get("topic"), bool(acl.get("allow"))) for acl in acls}


_LOCKS_GUARD = threading.Lock()
_THREAD_LOCKS: dict[str, threading.RLock] = {}       # accounts lock path -> the threads' lock in this process
_HELD: dict[str, list[int]] = {}                      # accounts lock path -> [flock'ed fd, depth] while held


@contextlib.contextmanager
def accounts_lock(folder: Path) -> Iterator[None]:
    """Hold the accounts of ``folder`` for one change: a thread lock within the process, ``fcntl.flock`` on
    ``ACCOUNTS_LOCK_FILE`` between processes (the ``ledgerlink up`` process and the directory both change
    accounts.json; without it one's read-change-write lost the other's change). Reentrant in a thread."""
    private_dir(folder)
    path = str((folder / ACCOUNTS_LOCK_FILE).resolve())
    with _LOCKS_GUARD:
        thread_lock = _THREAD_LOCKS.setdefault(path, threading.RLock())
    with thread_lock:
        held = _HELD.get(path)
        if held is None:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
            except BaseException:
                os.close(fd)
                raise
            held = _HELD[path] = [fd, 0]
        held[1] += 1
        try:
            yield
        finally:
            held[1] -= 1
            if held[1] == 0:
                del _HELD[path]
                os.close(held[0])                     # closing the descriptor releases the flock


def under_accounts_lock(method: Callable) -> Callable:
    """``method`` of ``SiteAccess`` (or of an owner of one as ``self.access``) runs under ``accounts_lock``."""
    @functools.wraps(method)
    def locked(self: Any, *args: Any, **kwargs: Any) -> Any:
        access = self if isinstance(self, SiteAccess) else self.access
        with accounts_lock(access.folder):
            return method(self, *args, **kwargs)
    return locked


class SiteAccess:
    """The accounts of one site in ``folder`` (``data_dir/broker``). Every change of accounts.json reads,
    changes and writes it (through a rename) under ``accounts_lock``."""

    def __init__(self, folder: str | Path, site: str) -> None:
        self.folder = Path(folder)
        self.site = site

    @classmethod
    def beside(cls, cluster_path: str | Path) -> "SiteAccess | None":
        """The accounts of the site whose ledger config is ``cluster_path`` (``ledgerlink up``'s layout:
        ``data_dir/ledger/cluster.json`` and ``data_dir/broker``), or None when there are none."""
        folder = Path(cluster_path).resolve().parent.parent / "broker"
        try:
            site = json.loads((folder / ACCOUNTS_FILE).read_text())["site"]
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return cls(folder, site)

    # --- the accounts file ---------------------------------------------------------------------------

    @property
    def accounts_path(self) -> Path:
        return self.folder / ACCOUNTS_FILE

    def load(self) -> dict[str, dict[str, Any]]:
        """username -> account (empty when there is no accounts file yet)."""
        try:
            data = json.loads(self.accounts_path.read_text())
        except FileNotFoundError:
            return {}
        if data.get("site") != self.site:
            raise AccessError("%s holds the accounts of site %r, not %r" % (self.accounts_path, data.get("site"),
                                                                            self.site))
        return dict(data["accounts"])

    def _save(self, accounts: dict[str, dict[str, Any]]) -> None:
        private_dir(self.folder)
        write_private(self.accounts_path, json.dumps({"site": self.site, "accounts": accounts}, indent=1,
                                                      sort_keys=True) + "\n")

    def credentials_path(self, username: str) -> Path:
        return self.folder / "credentials" / (username + ".json")

    def login(self, username: str) -> dict[str, str]:
        """``{"username": ..., "password": ...}`` of an account made here (from its credentials file)."""
        try:
            data = json.loads(self.credentials_path(username).read_text())
        except FileNotFoundError:
            raise AccessError("no credentials file for MQTT account %s in %s" % (username, self.folder)) from None
        return {"username": data["username"], "password": data["password"]}

    # --- changes -------------------------------------------------------------------------------------

    def add(self, username: str, role: str, device: bytes | None = None, rotate: bool = False,
            site: str | None = None) -> dict[str, str]:
        """Make the account (or, with ``rotate``, give it a new password; enable it again when it was
        disabled); write its credentials file; return its login. An existing account is kept as it is.
        ``site``: the account's topics are another site's on the same broker (default: this one's)."""
        return self.add_many([(username, role, device, site)], rotate)[0]

    @under_accounts_lock
    def add_many(self, wanted: list[tuple[str, str, bytes | None, str | None]], rotate: bool = False,
                 keys: dict[str, str] | None = None) -> list[dict[str, str]]:
        """``add`` of each (username, role, device, site), with one write of the accounts and one change
        sent to the running broker. ``keys``: username -> the registered device key (hex), noted on accounts
        that have none, so that a later key on the ledger is taken as a rotation (``follow_record``)."""
        accounts = self.load()
        logins, changes = [], []
        noted = False
        for username, key in (keys or {}).items():
            if username in accounts and "key" not in accounts[username]:
                accounts[username]["key"] = key
                noted = True
        for username, role, device, site in wanted:
            rules(site or self.site, username, role, device.hex() if device else None)       # the role is known
            old = accounts.get(username)
            if old is not None and old["role"] != role:
                raise AccessError("MQTT account %s has role %s, not %s" % (username, old["role"], role))
            if old is not None and not rotate and self.credentials_path(username).exists():
                logins.append(self.login(username))
                continue
            password = base64.urlsafe_b64encode(secrets.token_bytes(PASSWORD_BYTES)).decode()
            account = {"role": role, "disabled": False, **hash_password(password)}
            if device is not None:
                account["device"] = device.hex()
            if old is not None and "key" in old:
                account["key"] = old["key"]                   # the device key the password follows
            if old is not None and old.get("pairs"):
                account["pairs"] = old["pairs"]               # a new password keeps the pair grants
            elif username in (keys or {}):
                account["key"] = keys[username]
            if site is not None and site != self.site:
                account["site"] = site
            accounts[username] = account
            self._write_login(username, password, device is not None)
            logins.append({"username": username, "password": password})
            changes.append(("set", username, password))
        if changes or noted:
            self._save(accounts)
        if changes:
            self.apply_live(changes)
        return logins

    def add_device(self, device_id: bytes, role: str = "device", rotate: bool = False) -> dict[str, str]:
        return self.add(device_username(device_id), role, device_id, rotate)

    def add_registered(self, requests: list[bytes], rotate: bool = False) -> list[dict[str, str]]:
        """The accounts of the devices whose ``registration-request``s these are (a controller's may also
        send commands)."""
        from ledgerlink.core import cbor, cose

        from ledgerlink.ledger.state.encoding import compress_pubkey

        wanted, keys = [], {}
        for request in requests:
            payload = cbor.loads(cose.decode_sign1(request).payload)
            wanted.append((device_username(payload[1]), "controller" if payload.get(3) == ROLE_CONTROLLER else "device",
                           payload[1], None))
            keys[device_username(payload[1])] = compress_pubkey(payload[2]).hex()
        return self.add_many(wanted, rotate, keys)

    def login_key(self) -> bytes:
        """The site's broker-login private key (``login.key``, hex, 0600; made on first use)."""
        from ledgerlink.core.backend import get_backend

        path = self.folder / LOGIN_KEY_FILE
        if not path.exists():
            private_dir(self.folder)
            write_private(path, get_backend("cpython").generate_private_key().hex() + "\n")
        return bytes.fromhex(path.read_text().strip())

    def login_public(self) -> bytes:
        """The public key a device needs to compute its login after a key rotation (``device_login``)."""
        from ledgerlink.core.backend import get_backend

        return get_backend("cpython").public_key(self.login_key(), True)

    @under_accounts_lock
    def follow_record(self, dev: bytes, record: dict[Any, Any] | None) -> list[str]:
        """Bring a device's account in step with its proven ledger ``record``: disabled while the device is
        banned; after a key rotation (a key other than the account's, or key version above 1 for an account
        that noted none) the password of ``key_password`` for the new key, the old one refused and its
        connection ended. One line per change; nothing when the device has no account."""
        from ledgerlink.ledger.state.codes import DeviceStatus
        from ledgerlink.ledger.state.encoding import compress_pubkey

        username = device_username(dev)
        accounts = self.load()
        a = accounts.get(username)
        if a is None or not isinstance(record, dict):
            return []
        lines: list[str] = []
        changes: list[tuple[str, str, str | None]] = []
        key = compress_pubkey(record[2]).hex()
        noted = a.get("key") == key
        if not noted and (a.get("key") is not None or record.get(8, 1) > 1):
            password = key_password(self.login_key(), bytes.fromhex(key), username)
            a.update(hash_password(password))
            self._write_login(username, password, True)
            changes.append(("set", username, password))         # mosquitto: the client made again, enabled
            lines.append("broker account %s: new password for the device's rotated key (version %s)"
                         % (username, record.get(8)))
        a["key"] = key
        was_disabled, banned = bool(a.get("disabled")), record.get(5) == DeviceStatus.BANNED
        if banned and (changes or not was_disabled):
            changes.append(("disable", username, None))
        elif was_disabled and not banned and not changes:
            changes.append(("enable", username, None))
        if was_disabled != banned:
            lines.append("broker account %s %s" % (username, "disabled: banned" if banned else "enabled"))
        a["disabled"] = banned
        if changes or not noted:
            self._save(accounts)
        if changes:
            self.apply_live(changes)
        return lines

    def followed(self, chain_id: str) -> int | None:
        """The ledger height of chain ``chain_id`` up to which the accounts follow the device records (kept
        across restarts, so a ban or key rotation committed while nobody followed is not missed)."""
        try:
            data = json.loads((self.folder / FOLLOWED_FILE).read_text())
            return int(data["height"]) if data.get("chain_id") == chain_id else None
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def note_followed(self, chain_id: str, height: int) -> None:
        private_dir(self.folder)
        write_private(self.folder / FOLLOWED_FILE, json.dumps({"chain_id": chain_id, "height": height}) + "\n")

    def _write_login(self, username: str, password: str, device: bool = False) -> None:
        """The account's credentials file (0600); a device's also names the site's broker-login public key."""
        login = {"username": username, "password": password}
        if device:
            login["login_key"] = self.login_public().hex()
        private_dir(self.folder / "credentials")
        write_private(self.credentials_path(username), json.dumps(login) + "\n")

    @under_accounts_lock
    def set_disabled(self, username: str, disabled: bool) -> bool:
        """Disable (or enable) an account; False when there is no such account."""
        accounts = self.load()
        if username not in accounts:
            return False
        accounts[username]["disabled"] = disabled
        self._save(accounts)
        self.apply_live([("disable" if disabled else "enable", username, None)])
        return True

    def anon_accounts(self, gateways: int = 1, enabled: bool = True) -> None:
        """The accounts of anonymous sessions, made (or enabled again) only when the site turns them on: the
        one anonymous devices share, each gateway process's fog service and the cloud side's; with
        ``enabled`` false, those made before are disabled."""
        if enabled:
            self.add_many([(anon_username(self.site), ANON_ROLE, None, None),
                           (anon_cloud_username(self.site), "anon-cloud", None, None)]
                          + [(anon_fog_username(self.site, i), "anon-fog", None, None)
                             for i in range(1, gateways + 1)])
        for username, a in self.load().items():
            if a["role"] in ANON_ROLES and bool(a.get("disabled")) == enabled:
                self.set_disabled(username, not enabled)

    def site_accounts(self, gateways: int = 1, broker_admin: bool = True) -> None:
        """The accounts every site has: its gateway processes, the consumer and (``broker_admin``: for the
        mosquitto started here) the broker admin."""
        self.add_many([(gateway_username(self.site, i), "gateway", None, None) for i in range(1, gateways + 1)]
                      + [(consumer_username(self.site), "consumer", None, None)]
                      + ([(ADMIN_USER, "broker-admin", None, None)] if broker_admin else []))

    # --- mosquitto -----------------------------------------------------------------------------------

    def dynsec_config(self) -> dict[str, Any]:
        """The dynamic security plugin's config for the accounts (one role per account)."""
        clients, roles = [], []
        for username, a in sorted(self.load().items()):
            clients.append(_dynsec_client(username, a, password=a["hash"], salt=a["salt"], iterations=a["iterations"],
                                          disabled=bool(a.get("disabled"))))
            roles.append({"rolename": username, "acls": _dynsec_acls(
                rules(a.get("site", self.site), username, a["role"], a.get("device"), a.get("pairs", ())))})
        return {"defaultACLAccess": {"publishClientSend": False, "publishClientReceive": False, "subscribe": False,
                                     "unsubscribe": True},
                "clients": clients, "groups": [], "roles": roles}

    def mosquitto_lines(self) -> str:
        """mosquitto.conf lines that turn anonymous access off and load the plugin with the accounts."""
        plugin = find_dynsec_plugin()
        if plugin is None:
            raise AccessError("mosquitto's dynamic security plugin (mosquitto_dynamic_security.so) was not found "
                              "in %s" % ", ".join(DYNSEC_PLUGIN_PATHS))
        path = self.folder / DYNSEC_FILE
        write_private(path, json.dumps(self.dynsec_config(), indent=1) + "\n")
        return "allow_anonymous false\nplugin %s\nplugin_opt_config_file %s\n" % (plugin, path)

    # --- the running broker --------------------------------------------------------------------------

    def write_runtime(self, kind: str, host: str, port: int, admin_login: str | Path | None = None,
                      tls_ca: str | Path | None = None) -> None:
        """Note which broker serves the accounts (read by ``apply_live`` in other processes); ``admin_login``:
        the file with the login of an external mosquitto's dynamic-security admin; ``tls_ca``: the CA its
        TLS listener on ``port`` is checked against."""
        private_dir(self.folder)
        runtime: dict[str, Any] = {"kind": kind, "host": host, "port": port}
        if admin_login is not None:
            runtime["admin_login"] = str(Path(admin_login).resolve())
        if tls_ca is not None:
            runtime["tls_ca"] = str(Path(tls_ca).resolve())
        write_private(self.folder / RUNTIME_FILE, json.dumps(runtime) + "\n")

    def apply_live(self, changes: Iterable[tuple[str, str, str | None]]) -> None:
        """Tell a running mosquitto about changed accounts (the embedded broker reads the file itself).

        ``changes``: ("set", username, password), ("disable", username, None), ("enable", username, None).
        """
        try:
            runtime = json.loads((self.folder / RUNTIME_FILE).read_text())
        except (FileNotFoundError, ValueError):
            return
        if runtime.get("kind") == "embedded":
            self._wait_applied()
            return
        if runtime.get("kind") != "mosquitto":
            return
        changes = list(changes)
        commands = self._dynsec_commands(changes)
        if commands:
            dynsec_command(runtime["host"], int(runtime["port"]), self._admin_login(runtime), commands,
                           tls_ca=runtime.get("tls_ca"))
        if "admin_login" in runtime:                  # an external broker: its passwords as set (sync_external)
            accounts = self.load()
            self._note_synced(runtime["host"], int(runtime["port"]), {
                username: accounts[username]["hash"] for op, username, _ in changes
                if op == "set" and username != ADMIN_USER and username in accounts})

    def _admin_login(self, runtime: dict[str, Any]) -> dict[str, str]:
        """The login that may send dynamic-security commands: an external broker's admin, else ours."""
        if "admin_login" not in runtime:
            return self.login(ADMIN_USER)
        return read_admin_login(runtime["admin_login"])

    def _dynsec_commands(self, changes: Iterable[tuple[str, str, str | None]]) -> list[dict[str, Any]]:
        """The dynamic-security commands of ``apply_live``'s changes (the broker admin's own account is
        never changed this way)."""
        commands: list[dict[str, Any]] = []
        accounts = self.load()
        for op, username, password in changes:
            if username == ADMIN_USER:
                continue
            a = accounts[username]
            if op == "set":
                acls = _dynsec_acls(rules(a.get("site", self.site), username, a["role"], a.get("device"),
                                          a.get("pairs", ())))
                commands += [{"command": "deleteClient", "username": username},
                             {"command": "deleteRole", "rolename": username},
                             {"command": "createRole", "rolename": username, "acls": acls},
                             {"command": "createClient",
                              **_dynsec_client(username, a, password=password)}]
            else:
                commands.append({"command": op + "Client", "username": username})
        return commands

    def sync_external(self, host: str, port: int, admin_login: str | Path, gateways: int = 1,
                      tls_ca: str | Path | None = None) -> list[str]:
        """Bring the site's accounts and ACLs on an external mosquitto with the dynamic security plugin in
        step with ``accounts.json``, over ``DYNSEC_TOPIC`` as ``admin_login`` (a JSON file ``{"username",
        "password"}`` of one of its admins): the gateway and consumer accounts (made here when missing) and
        every account of the file. The broker's clients and roles are read first (``listClients``,
        ``listRoles``) and only what differs is sent (``_sync_commands``): missing ones made, changed ones
        modified, disabled ones disabled, ours that are gone deleted; an account as it should be gets no
        command, so its client stays connected and the plugin does not save its file again. Later changes
        (register, ban, key rotation) go to it as they happen (``apply_live``). Returns lines for the
        operator: what was done, and what in the broker's own settings still lets more through than the ACLs
        (anonymous clients, a default that allows). ``tls_ca``: ``port`` is a TLS listener whose certificate
        this CA issued (then no password crosses the network in the clear). AccessError when the admin login
        is refused or a command fails."""
        login = read_admin_login(admin_login)
        self.write_runtime("external", host, port)             # nothing sent live while the accounts are made
        self.site_accounts(gateways, broker_admin=False)
        accounts = self.load()
        wanted: dict[str, tuple[dict[str, Any], str]] = {}
        missing = []
        for username, a in sorted(accounts.items()):
            if username == ADMIN_USER:
                continue
            try:
                wanted[username] = (a, self.login(username)["password"])
            except AccessError:
                missing.append(username)
        reads = [{"command": "getDefaultACLAccess"}, {"command": "listClients", "verbose": True},
                 {"command": "listRoles", "verbose": True}]
        answers = self._dynsec_checked(host, port, login, admin_login, reads, tls_ca)
        found = {a.get("command"): a.get("data") or {} for a in answers}
        clients = {c["username"]: c for c in found["listClients"].get("clients", []) if "username" in c}
        roles = {r["rolename"]: r for r in found["listRoles"].get("roles", []) if "rolename" in r}
        synced = self._synced(host, port)
        commands, counts = self._sync_commands(wanted, clients, roles, synced, set(accounts))
        if commands:
            self._dynsec_checked(host, port, login, admin_login, commands, tls_ca)
        self._note_synced(host, port, {u: a["hash"] for u, (a, _) in wanted.items()}, replace=True,
                          keep=set(missing) & set(synced))
        self.write_runtime("mosquitto", host, port, admin_login, tls_ca)
        lines = ["broker accounts: %d made, %d changed, %d deleted, %d as they were on the external broker %s:%d "
                 "with its dynamic security plugin (as %s); registrations, bans and key rotations follow"
                 % (counts["made"], counts["changed"], counts["deleted"], counts["kept"], host, port,
                    login["username"])]
        if missing:
            lines.append("broker accounts without a credentials file here, not made on the broker: %s"
                         % ", ".join(missing))
        defaults = {acl.get("acltype"): acl.get("allow") for acl in found["getDefaultACLAccess"].get("acls", [])}
        open_kinds = [k for k in ("publishClientSend", "subscribe") if defaults.get(k)]   # receive: as subscribed
        if open_kinds:
            lines.append("warning: the external broker allows %s by default, so clients may do more than their "
                         "ACLs say; set it to deny: %s" % (", ".join(open_kinds), "; ".join(
                             "mosquitto_ctrl -u %s -h %s -p %d dynsec setDefaultACLAccess %s deny"
                             % (login["username"], host, port, k) for k in open_kinds)))
        if anonymous_accepted(host, port, tls_ca):
            lines.append("warning: the external broker accepts anonymous clients: set `allow_anonymous false` "
                         "in its mosquitto.conf")
        return lines

    def _dynsec_checked(self, host: str, port: int, login: dict[str, str], admin_login: str | Path,
                        commands: list[dict[str, Any]], tls_ca: str | Path | None) -> list[dict[str, Any]]:
        """``dynsec_command``'s answers; AccessError when the login is refused, an answer is missing or a
        command failed (a delete of what is not there excepted)."""
        try:
            answers = dynsec_command(host, port, login, commands, tls_ca=tls_ca)
        except (OSError, ValueError) as exc:
            raise AccessError("the external broker %s:%d did not take the dynamic-security admin's login from %s: %s"
                              % (host, port, admin_login, exc)) from None
        failed = [a for a in answers if a.get("error") and a.get("command") not in ("deleteClient", "deleteRole")]
        if len(answers) < len(commands) or failed:
            raise AccessError("the external broker %s:%d did not take the accounts (%d of %d answers%s): is the "
                              "dynamic security plugin loaded and %s one of its admins?"
                              % (host, port, len(answers), len(commands),
                                 "; %s: %s" % (failed[0].get("command"), failed[0].get("error")) if failed else "",
                                 login["username"]))
        return answers

    def _sync_commands(self, wanted: dict[str, tuple[dict[str, Any], str]], clients: dict[str, dict[str, Any]],
                       roles: dict[str, dict[str, Any]], synced: dict[str, str],
                       known: set[str]) -> tuple[list[dict[str, Any]], dict[str, int]]:
        """The dynamic-security commands that make the broker's ``clients`` and ``roles`` (as ``listClients``
        and ``listRoles`` give them) hold the ``wanted`` accounts (username -> (account, password)), and the
        counts made / changed / deleted / kept. The broker never shows a password: one counts as set when
        ``synced`` (the account's password hash when it was last set there) holds the account's hash now.
        Deleted: the accounts set there before (``synced``) that are no longer in the file (``known``)."""
        commands: list[dict[str, Any]] = []
        counts = {"made": 0, "changed": 0, "deleted": 0, "kept": 0}
        for username, (a, password) in sorted(wanted.items()):
            acls = _dynsec_acls(rules(a.get("site", self.site), username, a["role"], a.get("device"),
                                      a.get("pairs", ())))
            role = roles.get(username)
            client = clients.get(username)
            before = len(commands)
            if role is None:
                commands.append({"command": "createRole", "rolename": username, "acls": acls})
            elif _acl_set(role.get("acls", [])) != _acl_set(acls):
                commands.append({"command": "modifyRole", "rolename": username, "acls": acls})
            if client is None:
                commands.append({"command": "createClient", **_dynsec_client(username, a, password=password)})
                if a.get("disabled"):
                    commands.append({"command": "disableClient", "username": username})
                counts["made"] += 1
                continue
            modify: dict[str, Any] = {}
            if client.get("clientid") != _bound_client_id(username, a):
                modify["clientid"] = _bound_client_id(username, a) or ""
            if [r.get("rolename") for r in client.get("roles", [])] != [username]:
                modify["roles"] = [{"rolename": username}]
            if client.get("groups"):
                modify["groups"] = []
            if synced.get(username) != a["hash"]:
                modify["password"] = password
            if modify:
                commands.append({"command": "modifyClient", "username": username, **modify})
            if bool(client.get("disabled")) != bool(a.get("disabled")):
                commands.append({"command": "disableClient" if a.get("disabled") else "enableClient",
                                 "username": username})
            counts["changed" if len(commands) > before else "kept"] += 1
        for username in sorted(set(synced) - known):
            if username in clients:
                commands.append({"command": "deleteClient", "username": username})
            if username in roles:
                commands.append({"command": "deleteRole", "rolename": username})
            if username in clients or username in roles:
                counts["deleted"] += 1
        return commands, counts

    def _synced(self, host: str, port: int) -> dict[str, str]:
        """username -> the password hash of the account when its password was last set on the external
        broker ``host``:``port`` (``SYNCED_FILE``; empty for another broker)."""
        try:
            data = json.loads((self.folder / SYNCED_FILE).read_text())
        except (OSError, ValueError):
            return {}
        if not isinstance(data, dict) or data.get("broker") != "%s:%d" % (host, port):
            return {}
        return dict(data.get("passwords") or {})

    def _note_synced(self, host: str, port: int, passwords: dict[str, str], replace: bool = False,
                     keep: Iterable[str] = ()) -> None:
        """Note the password hashes just set on the external broker (``replace``: these are all of ours
        there, with the ``keep`` ones noted before)."""
        before = self._synced(host, port)
        noted = {u: before[u] for u in keep if u in before} if replace else before
        noted.update(passwords)
        private_dir(self.folder)
        write_private(self.folder / SYNCED_FILE, json.dumps({"broker": "%s:%d" % (host, port),
                                                             "passwords": noted}, sort_keys=True) + "\n")

    def _wait_applied(self, timeout: float = 2.0) -> None:
        """Wait until the embedded broker has read the accounts file as it is now."""
        want = str(os.stat(self.accounts_path).st_mtime_ns)
        applied = self.folder / (ACCOUNTS_FILE + APPLIED_SUFFIX)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if applied.read_text() == want:
                    return
            except FileNotFoundError:
                pass
            time.sleep(0.01)
        raise AccessError("the embedded broker did not read the changed accounts within %.1f s" % timeout)


def external_advice(site: str, host: str, port: int) -> str:
    """What the operator of an external broker must set up when ``ledgerlink up`` is given no admin login
    for it (printed once at start)."""
    return ("broker accounts: none made on the external broker %s:%d (no broker.admin_login). Either let "
            "`ledgerlink up` make and keep them: load mosquitto's dynamic security plugin there (mosquitto.conf: "
            "`plugin %s`, `plugin_opt_config_file dynamic-security.json`, `allow_anonymous false`), make an admin "
            "(`mosquitto_ctrl dynsec init dynamic-security.json ADMIN`) and set broker.admin_login to a file "
            "(mode 0600) holding {\"username\": \"ADMIN\", \"password\": \"...\"} (and broker.tls_ca to its CA "
            "when that port speaks TLS, as it should beyond this machine); or set up on that broker "
            "yourself: no anonymous clients, one login per client bound to its client id (the gateway's: "
            "%s; the consumer's: %s; a device's: ll-<device id hex>), and each role only its topics "
            "(docs/protocol.md, \"Broker accounts and ACLs\", site %s). Until then the gateway connects "
            "without a login." % (host, port, find_dynsec_plugin() or DYNSEC_PLUGIN_PATHS[0],
                                  gateway_username(site), consumer_username(site), site))


def read_admin_login(path: str | Path) -> dict[str, str]:
    """``{"username", "password"}`` from a broker admin's login file; AccessError says what is wrong."""
    try:
        data = json.loads(Path(path).read_text())
        return {"username": str(data["username"]), "password": str(data["password"])}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise AccessError("broker admin login %s is not a readable JSON file {\"username\", \"password\"}: %s"
                          % (path, exc)) from None


def anonymous_accepted(host: str, port: int, tls_ca: str | Path | None = None, timeout: float = 5.0) -> bool:
    """Whether the broker at ``host``:``port`` (TLS checked against ``tls_ca`` when given) lets a client in
    without an account (an MQTT 5 CONNECT with no username, answered by CONNACK code 0)."""
    import socket

    from ledgerlink import mqtt5

    raw = socket.create_connection((host, port), timeout=timeout)
    with (client_tls_context(tls_ca).wrap_socket(raw, server_hostname=host) if tls_ca else raw) as sock:
        sock.sendall(mqtt5.encode_connect("ll-probe-%s" % secrets.token_hex(4), 10, True))
        data = b""
        while len(data) < 4:
            chunk = sock.recv(64)
            if not chunk:
                return False
            data += chunk
    return data[0] == 0x20 and data[3] == 0


def dynsec_command(host: str, port: int, login: dict[str, str], commands: list[dict[str, Any]],
                   timeout: float = 5.0, tls_ca: str | Path | None = None) -> list[dict[str, Any]]:
    """Send ``commands`` to mosquitto's dynamic security plugin and wait for its answers (over TLS checked
    against ``tls_ca`` when given) until all came or ``timeout`` seconds passed without one: the plugin
    saves its file after each changing command, so a long list takes a while on a busy machine."""
    import threading

    import paho.mqtt.client as mqtt

    done = threading.Event()
    answers: list[dict[str, Any]] = []
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=login["username"], protocol=mqtt.MQTTv5)
    c.username_pw_set(login["username"], login["password"])
    if tls_ca is not None:
        c.tls_set_context(client_tls_context(tls_ca))
    subscribed = threading.Event()

    def on_message(client: Any, userdata: Any, msg: Any) -> None:
        answers.extend(json.loads(msg.payload).get("responses", []))
        done.set()

    c.on_message = on_message
    c.on_subscribe = lambda *a: subscribed.set()
    refused: list[str] = []

    def on_connect(client: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if reason.is_failure:
            refused.append(str(reason))
            subscribed.set()
        else:
            client.subscribe(DYNSEC_TOPIC + "/response", 1)

    c.on_connect = on_connect
    c.connect(host, port)
    c.loop_start()
    try:
        if not subscribed.wait(timeout) or refused:
            raise AccessError("mosquitto at %s:%d did not take the broker admin %s%s" % (
                host, port, login["username"], ": login refused (%s)" % refused[0] if refused else "'s subscription"))
        for i in range(0, len(commands), DYNSEC_CHUNK):            # each message well below the size limit
            c.publish(DYNSEC_TOPIC, json.dumps({"commands": commands[i:i + DYNSEC_CHUNK]}), qos=1)
        deadline = time.monotonic() + timeout
        seen = 0
        while len(answers) < len(commands) and time.monotonic() < deadline:
            done.wait(0.05)
            done.clear()
            if len(answers) > seen:                # the broker is answering: ``timeout`` again for the rest
                seen = len(answers)
                deadline = time.monotonic() + timeout
    finally:
        c.disconnect()
        c.loop_stop()
    return answers


# --- TLS: the site CA, the broker's certificate, client certificates ------------------------------------

TLS_DIR = "tls"
CA_DAYS = 3650
LEAF_DAYS = 825


def _tls_dir(folder: Path) -> Path:
    return private_dir(Path(folder) / TLS_DIR)


def _write_key(path: Path, key: Any) -> None:
    from cryptography.hazmat.primitives import serialization

    write_private(path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()).decode())


def _load_ca(tls: Path) -> tuple[Any, Any]:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_private_key((tls / "ca.key").read_bytes(), None)
    return x509.load_pem_x509_certificate((tls / "ca.pem").read_bytes()), key


def _issue(tls: Path, name: str, subject: str, hosts: Iterable[str] = (), client: bool = False) -> tuple[Path, Path]:
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    ca_cert, ca_key = _load_ca(tls)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    names: list[x509.GeneralName] = []
    for h in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            names.append(x509.DNSName(h))
    builder = (x509.CertificateBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
               .issuer_name(ca_cert.subject).public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=LEAF_DAYS))
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH if client
                                                     else ExtendedKeyUsageOID.SERVER_AUTH]), critical=False))
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    cert_path, key_path = tls / (name + ".pem"), tls / (name + ".key")
    _write_key(key_path, key)
    write_private(cert_path, cert.public_bytes(serialization.Encoding.PEM).decode())
    os.chmod(cert_path, 0o644)
    return cert_path, key_path


def site_tls(folder: str | Path, site: str, hosts: Iterable[str]) -> dict[str, Path]:
    """The site CA (made once) and the broker's certificate for ``hosts`` (made again when they change):
    ``{"ca": ca.pem, "cert": server.pem, "key": server.key}`` in ``folder/tls`` (keys 0600)."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    tls = _tls_dir(Path(folder))
    if not (tls / "ca.pem").exists():
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ledgerlink site CA %s" % site)])
        now = datetime.datetime.now(datetime.timezone.utc)
        cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(minutes=5))
                .not_valid_after(now + datetime.timedelta(days=CA_DAYS))
                .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False,
                                             key_encipherment=False, data_encipherment=False, key_agreement=False,
                                             key_cert_sign=True, crl_sign=True, encipher_only=False,
                                             decipher_only=False), critical=True)
                .sign(key, hashes.SHA256()))
        _write_key(tls / "ca.key", key)
        write_private(tls / "ca.pem", cert.public_bytes(serialization.Encoding.PEM).decode())
        os.chmod(tls / "ca.pem", 0o644)
    hosts = sorted(set(hosts) | {"127.0.0.1", "localhost"})
    stamp = tls / "server.hosts"
    if not (tls / "server.pem").exists() or not stamp.exists() or stamp.read_text() != " ".join(hosts):
        _issue(tls, "server", "ledgerlink broker %s" % site, hosts)
        write_private(stamp, " ".join(hosts))
    return {"ca": tls / "ca.pem", "cert": tls / "server.pem", "key": tls / "server.key"}


def client_certificate(folder: str | Path, username: str) -> tuple[Path, Path]:
    """A client certificate (CN = ``username``) from the site CA: (cert, key) in ``folder/tls``."""
    return _issue(_tls_dir(Path(folder)), "client-" + username, username, client=True)


def client_tls_context(ca: str | Path, cert: str | Path | None = None, key: str | Path | None = None) -> Any:
    """An ``ssl.SSLContext`` that accepts only a broker certificate from the site CA ``ca`` for the host
    connected to (optionally presenting a client certificate)."""
    import ssl

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_verify_locations(str(ca))
    if cert is not None:
        ctx.load_cert_chain(str(cert), str(key) if key is not None else None)
    return ctx


def server_tls_context(paths: dict[str, Path], require_client_cert: bool = False) -> Any:
    """The broker's ``ssl.SSLContext`` (client certificates from the site CA checked when given or required)."""
    import ssl

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(paths["cert"]), str(paths["key"]))
    ctx.load_verify_locations(str(paths["ca"]))
    ctx.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_OPTIONAL
    return ctx


def mosquitto_tls_lines(paths: dict[str, Path], bind: str, port: int, max_connections: int,
                        require_client_cert: bool = False) -> str:
    """A mosquitto TLS listener (the accounts and ACLs apply to it as to the plain one); the lines after it
    in mosquitto.conf must be global options."""
    return ("listener %d %s\nmax_connections %d\ncafile %s\ncertfile %s\nkeyfile %s\ntls_version tlsv1.2\n"
            "require_certificate %s\n" % (port, bind, max_connections, paths["ca"], paths["cert"], paths["key"],
                                          "true" if require_client_cert else "false"))
