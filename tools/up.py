"""``ledgerlink up --config FILE``: one site for real devices (broker, ledger cluster, gateway, dashboard).

The same parts as ``ledgerlink demo`` (``ledgerlink.tools.stack``) without simulated devices, placed by a
config file (JSON, or TOML when the name ends in .toml; relative paths are relative to the file)::

    {
      "data_dir": "site-data",                         # required: keys, ledger, gateway store, logs
      "site": "plant-1",                               # required: [a-z0-9-]{1,32}
      "broker": {"host": "127.0.0.1", "port": 1883, "tls_port": 8883},
                                                       # the broker started here (port 0: a free one), also
                                                       # with TLS on tls_port (the site CA in data_dir/broker/tls)
                                                       # or {"external": "mqtt.lan:1883"}: a running MQTT 5 broker,
                                                       # with "admin_login": "admin.json" when it is a mosquitto
                                                       # with the dynamic security plugin (up makes the accounts)
                                                       # and "tls_ca": "ca.pem" when that port speaks TLS
      "ledger": {"nodes": 4, "host": "127.0.0.1", "base_port": 27000, "chain_id": "ll-plant-1",
                 "threshold": true},
                                                       # peer ports base_port+i, client ports base_port+1000+i;
                                                       # threshold (default true, nodes >= 4): FROST header
                                                       # certificates
      "gateway": {"http_host": "127.0.0.1", "http_port": 8080, "limits": {}, "batch": {}, "processes": 1},
                                                       # processes: gateways sharing the subscription and store
      "admin_key": "admin.key",                        # the genesis admin's key (default: made in data_dir)
      "anon": {"enabled": true, "cloud_public": "<hex>", "fog_key": "anon-fog.key"},
                                                       # anonymous sessions (off by default): the cloud side's
                                                       # escrow public key; the fog's request key file (0600;
                                                       # default: made in data_dir/ledger/keys)
      "peer": {"enabled": true},                       # device-to-device sessions (off by default): runs the
                                                       # site's directory
      "updates": {"enabled": true}                     # verified updates (off by default): runs the site's
                                                       # update service under the broker account ll-updates
    }

The broker started is chosen by ``--broker``: mosquitto, embedded (``ledgerlink.tools.mqtt_broker``, in
Python, nothing to install) or auto (the default, also from $LEDGERLINK_BROKER: mosquitto when installed,
else the embedded one).

Every setting is checked before anything is written or started (fields and types, ports in range and
free, the external broker answering, the admin key file, an existing data directory matching the
config); a bad config ends with one line saying what to change and exit status 2. The first run writes
the validator keys, the genesis (the configured admin key is its admin) and ``data_dir/ledger/cluster.json``
into a temporary directory renamed into place, so an interrupted first run leaves nothing half-made;
later runs reuse them.

Threshold headers (``ledger.threshold``, default true from 4 nodes on; a 1-node ledger has no threshold
key, FROST needs t >= 2 shares): the first run also runs the dealerless FROST key
generation among the validators (``ledgerlink.ledger.cluster.dkg_in_process``, t = 2f+1): each signing share
goes to ``ledger/keys/validator<i>.share`` (0600, beside the node key), the group key and the verifying
shares into the genesis chain record. Every block then gets a threshold certificate, and a device checks
a receipt's header with one FROST verification whatever the number of validators; the group key is part of
the trust anchor ``ledgerlink provision`` writes to boards. Turn it off (``"threshold": false``) only for a
site whose devices or readers cannot carry the group key yet (their anchor names the validator keys alone,
and a header of a set with a group key names a different validators-hash) or whose validators must not
hold a second secret. The choice is fixed at the first run (the genesis names it): a later run whose config
sets the other value is refused, one that leaves it out runs the ledger as made.

When everything runs it prints where each part is and a line starting with
``ready``; Ctrl-C or SIGTERM stops the gateways, the nodes and the broker in that order (exit 0).

The site is supervised: a part that exits by itself (a crashed gateway, ledger node or broker) is started
again with backoff while the others keep running (``ledgerlink.tools.stack``: 0.5 s, doubled for each crash
in a row, at most 30 s; a gateway from a warm standby interpreter that has its imports done, so it is
serving a fraction of a second later), and each exit and restart is printed. ``data_dir/status.json`` and
``data_dir/status.prom`` say what runs and how often each part was restarted (``ledgerlink up --status
--config FILE`` prints it). The site stops only when the operator stops it. Private keys are never printed.

The local broker admits no anonymous client: every client logs in with its own account, bound to its
client id, and may use only its role's topics (``ledgerlink.tools.broker_access``: the accounts in
``data_dir/broker``, enforced by mosquitto's dynamic security plugin or the embedded broker). ``up``
makes the accounts of the gateway processes, the consumer (reads the verified readings) and the broker
admin; ``ledgerlink provision`` and ``admin register`` make a device's, and a ban disables it at once.
The dashboard asks for the token in ``data_dir/dashboard.token``. Secret files are mode 0600 and
``data_dir`` is 0700. On an external broker (``broker.external``) ``up`` makes and keeps the same accounts
and ACLs when it is a mosquitto with the dynamic security plugin and ``broker.admin_login`` names a file
with one of its admins' login (``SiteAccess.sync_external``); otherwise it prints once what the operator
must set up there (``broker_access.external_advice``).

Anonymous sessions (docs/protocol.md) are off unless ``anon.enabled`` is true. Then ``up`` also makes the
broker accounts of anonymous sessions (``SiteAccess.anon_accounts``: the login anonymous devices share, limited
to ``ll/S/anon``, one for each gateway's fog service and one for the cloud side) and each gateway process runs
the fog's service (``ledgerlink.gateway.main``'s ``anon``) with the fog request key and the configured escrow
public key; the summary prints the fog's request key and where the shared login is.

Device-to-device sessions (issue 14: discovery, query and information packets on pair topics) are off unless
``peer.enabled`` is true. Then ``up`` also runs the site's directory (``ledgerlink.gateway.directory``, log
``data_dir/directory.log``) with its own broker account and its own broker admin for pair-topic ACLs, and
supervises it like a gateway; without it no account reads the devices' directory requests and no pair topic
is ever granted.

Verified updates (issue 14, docs/protocol.md "Updates") are off unless ``updates.enabled`` is true (least
privilege: otherwise no account may publish on the devices' ``fw`` topics). Then ``up`` also makes the broker
account ``ll-updates`` (role updates) and runs the site's update service (``ledgerlink.tools.admin_release
serve --data-dir``, log ``data_dir/updates.log``), supervised like the directory: it offers the releases that
``ledgerlink admin release`` writes to ``data_dir/ledger/releases`` with record proofs re-taken from the ledger,
and relays the devices' version statements to the ledger with its relay key ``data_dir/ledger/keys/updates-relay.key``
(made once, mode 0600, registered by the admin key at the first start with updates on).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import sys
import tempfile
import time
import tomllib
from pathlib import Path
from typing import Any, Sequence

from ledgerlink.core import p256
from ledgerlink.core.backend import get_backend
from ledgerlink.core.errors import LedgerlinkError

EXIT_CONFIG = 2
EXIT_FAILED = 1
SITE_RE = re.compile(r"[a-z0-9-]{1,32}")
CHAIN_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")
CLIENT_PORT_OFFSET = 1000
MAX_GATEWAY_PROCESSES = 16
SUPERVISE_S = 0.25             # how often the parts are looked at
KNOWN = {
    "": ("data_dir", "site", "broker", "ledger", "gateway", "admin_key", "anon", "peer", "updates"),
    "broker": ("host", "port", "tls_port", "external", "admin_login", "tls_ca"),
    "ledger": ("nodes", "host", "base_port", "chain_id", "threshold"),
    "gateway": ("http_host", "http_port", "limits", "batch", "processes"),
    "anon": ("enabled", "cloud_public", "fog_key"),
    "peer": ("enabled",),
    "updates": ("enabled",),
}
ANON_FOG_KEY = "anon-fog.key"      # in data_dir/ledger/keys unless anon.fog_key names a file
ANON_STORE = "anon-fog.sqlite"


class ConfigError(Exception):
    """The config cannot be used; the message says what to change."""


class UpConfig:
    """A checked ``ledgerlink up`` config (paths resolved against the config file's folder)."""

    def __init__(self, path: Path, raw: dict[str, Any]) -> None:
        self.path = path
        self.raw = raw
        base = path.resolve().parent
        self.data_dir = _resolve(base, _text(raw, "data_dir", None))
        self.site = _text(raw, "site", None)
        if not SITE_RE.fullmatch(self.site):
            raise ConfigError("site %r must match [a-z0-9-]{1,32}" % self.site)
        broker = _section(raw, "broker")
        self.broker_external: tuple[str, int] | None = None
        if "external" in broker:
            if "port" in broker or "host" in broker:
                raise ConfigError("broker: give either external (a running broker) or host/port (start one), not both")
            self.broker_external = _host_port(broker["external"], "broker.external")
        self.broker_admin_login: Path | None = None
        if "admin_login" in broker:
            if "external" not in broker:
                raise ConfigError("broker.admin_login is the login of an external broker's admin: give broker.external")
            self.broker_admin_login = _resolve(base, _text(broker, "admin_login", None, "broker.admin_login"))
        self.broker_tls_ca: Path | None = None
        if "tls_ca" in broker:
            if "external" not in broker:
                raise ConfigError("broker.tls_ca is the CA of an external broker's TLS listener: give broker.external "
                                  "(the broker started here makes its own site CA)")
            self.broker_tls_ca = _resolve(base, _text(broker, "tls_ca", None, "broker.tls_ca"))
        self.broker_host = _text(broker, "host", "127.0.0.1", "broker.host")
        self.broker_port = _port(broker, "port", 1883, "broker.port")
        self.broker_tls_port = _port(broker, "tls_port", 0, "broker.tls_port")
        ledger = _section(raw, "ledger")
        self.nodes = _int(ledger, "nodes", 4, "ledger.nodes")
        if self.nodes < 1 or self.nodes > 64 or (self.nodes - 1) % 3:
            raise ConfigError("ledger.nodes must be 3f+1 (1, 4, 7, ...) and at most 64, not %d" % self.nodes)
        self.ledger_host = _text(ledger, "host", "127.0.0.1", "ledger.host")
        self.base_port = _port(ledger, "base_port", 0, "ledger.base_port")
        if self.base_port and self.base_port + CLIENT_PORT_OFFSET + self.nodes - 1 > 65535:
            raise ConfigError("ledger.base_port %d leaves no room for client ports base_port+1000+i below 65536"
                              % self.base_port)
        self.chain_id = _text(ledger, "chain_id", "ll-" + self.site, "ledger.chain_id")
        if not CHAIN_RE.fullmatch(self.chain_id):
            raise ConfigError("ledger.chain_id %r must be 1..64 of A-Z a-z 0-9 . _ -" % self.chain_id)
        self.threshold = ledger.get("threshold", self.nodes > 1)
        if type(self.threshold) is not bool:
            raise ConfigError("ledger.threshold must be true or false, not %r" % (self.threshold,))
        if self.threshold and self.nodes == 1:
            raise ConfigError("ledger.threshold needs ledger.nodes >= 4 (a threshold key has at least two shares)")
        gateway = _section(raw, "gateway")
        self.http_host = _text(gateway, "http_host", "127.0.0.1", "gateway.http_host")
        self.http_port = _port(gateway, "http_port", 0, "gateway.http_port")
        self.limits = _map(gateway, "limits", "gateway.limits")
        self.batch = _map(gateway, "batch", "gateway.batch") or {"max": 256, "interval_ms": 100}
        self.gateway_processes = _int(gateway, "processes", 1, "gateway.processes")
        if not 1 <= self.gateway_processes <= MAX_GATEWAY_PROCESSES:
            raise ConfigError("gateway.processes must be 1..%d, not %d" % (MAX_GATEWAY_PROCESSES, self.gateway_processes))
        admin = raw.get("admin_key")
        if admin is not None and not isinstance(admin, str):
            raise ConfigError("admin_key must be the path of a key file")
        self.admin_key_given = admin is not None
        self.admin_key_path = (_resolve(base, admin) if admin is not None
                               else self.data_dir / "ledger" / "keys" / "admin.key")
        anon = _section(raw, "anon")
        self.anon = anon.get("enabled", False)
        if type(self.anon) is not bool:
            raise ConfigError("anon.enabled must be true or false, not %r" % (self.anon,))
        self.anon_cloud_public: bytes | None = None
        if self.anon:
            try:
                self.anon_cloud_public = bytes.fromhex(_text(anon, "cloud_public", None, "anon.cloud_public"))
                p256.decode_point(self.anon_cloud_public)
            except (ValueError, LedgerlinkError):
                raise ConfigError("anon.cloud_public must be the cloud side's escrow public key: a P-256 point in "
                                  "hex") from None
        self.anon_fog_key = (_resolve(base, _text(anon, "fog_key", None, "anon.fog_key")) if "fog_key" in anon
                             else self.data_dir / "ledger" / "keys" / ANON_FOG_KEY)
        self.peer = _section(raw, "peer").get("enabled", False)
        if type(self.peer) is not bool:
            raise ConfigError("peer.enabled must be true or false, not %r" % (self.peer,))
        self.updates = _section(raw, "updates").get("enabled", False)
        if type(self.updates) is not bool:
            raise ConfigError("updates.enabled must be true or false, not %r" % (self.updates,))

    @property
    def ledger_dir(self) -> Path:
        return self.data_dir / "ledger"

    @property
    def cluster_path(self) -> Path:
        return self.ledger_dir / "cluster.json"


def _resolve(base: Path, value: str) -> Path:
    p = Path(value).expanduser()
    return (p if p.is_absolute() else base / p).resolve()


def _section(raw: dict[str, Any], name: str) -> dict[str, Any]:
    value = raw.get(name, {})
    if not isinstance(value, dict):
        raise ConfigError("%s must be a table/object" % name)
    return value


def _text(d: dict[str, Any], key: str, default: str | None, label: str | None = None) -> str:
    label = label or key
    if key not in d:
        if default is None:
            raise ConfigError("the config lacks %s (required)" % label)
        return default
    value = d[key]
    if not isinstance(value, str) or not value:
        raise ConfigError("%s must be a non-empty text" % label)
    return value


def _int(d: dict[str, Any], key: str, default: int, label: str) -> int:
    value = d.get(key, default)
    if type(value) is not int:
        raise ConfigError("%s must be an integer, not %r" % (label, value))
    return value


def _port(d: dict[str, Any], key: str, default: int, label: str) -> int:
    value = _int(d, key, default, label)
    if not 0 <= value <= 65535:
        raise ConfigError("%s must be a port number 1..65535 (0: a free one), not %d" % (label, value))
    return value


def _map(d: dict[str, Any], key: str, label: str) -> dict[str, Any]:
    value = d.get(key, {})
    if not isinstance(value, dict):
        raise ConfigError("%s must be a table/object" % label)
    return dict(value)


def _host_port(value: Any, label: str) -> tuple[str, int]:
    if not isinstance(value, str) or value.count(":") != 1:
        raise ConfigError("%s must be HOST:PORT, not %r" % (label, value))
    host, port = value.split(":")
    if not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ConfigError("%s must be HOST:PORT with a port 1..65535, not %r" % (label, value))
    return host, int(port)


def load_config(path: str | Path) -> UpConfig:
    """Read and check the fields of an ``up`` config (nothing on the machine is looked at)."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise ConfigError("cannot read config %s: %s" % (p, exc.strerror or exc)) from None
    try:
        raw = tomllib.loads(text) if p.suffix == ".toml" else json.loads(text)
    except (ValueError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError("config %s is not valid %s: %s" % (p, "TOML" if p.suffix == ".toml" else "JSON", exc)) from None
    if not isinstance(raw, dict):
        raise ConfigError("config %s must hold an object/table" % p)
    for section, keys in KNOWN.items():
        d = raw if not section else raw.get(section, {})
        if isinstance(d, dict):
            for k in d:
                if k not in keys:
                    where = "%s." % section if section else ""
                    raise ConfigError("unknown config field %s%s (known: %s)" % (where, k, ", ".join(keys)))
    return UpConfig(p, raw)


def read_key(path: Path, what: str = "key") -> bytes:
    """A 32-byte P-256 private key from a hex key file; ConfigError says what is wrong."""
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        raise ConfigError("%s file %s does not exist" % (what, path)) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError("cannot read %s file %s: %s" % (what, path, exc)) from None
    try:
        key = bytes.fromhex(text)
        p256.scalar_from_bytes(key)
    except (ValueError, LedgerlinkError):
        raise ConfigError("%s file %s must hold a P-256 private key as 64 hex digits" % (what, path)) from None
    return key


# --- checks on the machine (read only) ------------------------------------------------------------------


def _bind_free(host: str, port: int) -> bool:
    """Whether a server could listen on host:port now (SO_REUSEADDR, as the servers set it)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def _existing_cluster(cfg: UpConfig) -> dict[str, Any] | None:
    if not cfg.cluster_path.exists():
        return None
    try:
        data = json.loads(cfg.cluster_path.read_text())
        n = len(data["validators"])
    except (OSError, ValueError, KeyError, TypeError):
        raise ConfigError("%s exists but is not a cluster config: move it away or use another data_dir"
                          % cfg.cluster_path) from None
    if n != cfg.nodes:
        raise ConfigError("data_dir %s holds a %d-node ledger but ledger.nodes is %d: set ledger.nodes = %d "
                          "or use another data_dir" % (cfg.data_dir, n, cfg.nodes, n))
    if cfg.base_port and int(data.get("base_port", 0)) != cfg.base_port:
        raise ConfigError("data_dir %s holds a ledger on base port %s but ledger.base_port is %d: set it to %s "
                          "or leave it out" % (cfg.data_dir, data.get("base_port"), cfg.base_port, data.get("base_port")))
    if data.get("chain_id") != cfg.chain_id and "chain_id" in cfg.raw.get("ledger", {}):
        raise ConfigError("data_dir %s holds chain %r but ledger.chain_id is %r" % (cfg.data_dir, data.get("chain_id"),
                                                                                  cfg.chain_id))
    made_threshold = bool((data.get("genesis") or {}).get("group_key"))
    if "threshold" in cfg.raw.get("ledger", {}) and made_threshold != cfg.threshold:
        raise ConfigError("data_dir %s holds a ledger %s threshold header certificates but ledger.threshold is %s: "
                          "leave it out or use another data_dir"
                          % (cfg.data_dir, "with" if made_threshold else "without", str(cfg.threshold).lower()))
    return data


def preflight(cfg: UpConfig, broker: str | None = None) -> dict[str, Any] | None:
    """Check the machine for ``cfg`` without writing anything; return the existing cluster config, if any.

    ``broker``: auto, mosquitto or embedded (None: $LEDGERLINK_BROKER, else auto).
    """
    from ledgerlink.tools.stack import BrokerMissing, StackError, choose_broker

    if cfg.data_dir.exists() and not cfg.data_dir.is_dir():
        raise ConfigError("data_dir %s is not a directory" % cfg.data_dir)
    existing = _existing_cluster(cfg)
    if cfg.anon and cfg.anon_fog_key.exists():
        read_key(cfg.anon_fog_key, "anon.fog_key")
        if cfg.anon_fog_key.stat().st_mode & 0o077:
            raise ConfigError("anon.fog_key %s is readable by others than its owner: chmod 600 it (it opens every "
                              "anonymous request)" % cfg.anon_fog_key)
    if cfg.admin_key_given and not cfg.admin_key_path.exists():
        if existing is not None:            # the ledger's admin exists already: a new key would not be it
            raise ConfigError("admin key file %s does not exist: this site's ledger has its admin already; "
                              "give its key file, or leave admin_key out" % cfg.admin_key_path)
        if not cfg.admin_key_path.parent.is_dir():
            raise ConfigError("admin_key %s: folder %s does not exist" % (cfg.admin_key_path,
                                                                            cfg.admin_key_path.parent))
    if cfg.admin_key_path.exists():
        read_key(cfg.admin_key_path, "admin key")
    ports: list[tuple[str, str, int]] = []
    if cfg.broker_external is None:
        try:
            choose_broker(broker)
        except BrokerMissing as exc:
            raise ConfigError("%s, or set broker.external to a running MQTT 5 broker" % exc) from None
        except StackError as exc:
            raise ConfigError(str(exc)) from None
        if cfg.broker_port:
            ports.append(("broker.port", cfg.broker_host, cfg.broker_port))
        if cfg.broker_tls_port:
            ports.append(("broker.tls_port", cfg.broker_host, cfg.broker_tls_port))
    else:
        host, port = cfg.broker_external
        try:
            socket.create_connection((host, port), timeout=3).close()
        except OSError as exc:
            raise ConfigError("broker %s:%d does not answer (%s): start it or fix broker.external"
                              % (host, port, exc.strerror or exc)) from None
        if cfg.broker_admin_login is not None:
            from ledgerlink.tools.broker_access import AccessError, read_admin_login

            try:
                read_admin_login(cfg.broker_admin_login)
            except AccessError as exc:
                raise ConfigError("%s (broker.admin_login)" % exc) from None
        if cfg.broker_tls_ca is not None:
            from ledgerlink.tools.broker_access import client_tls_context

            try:
                client_tls_context(cfg.broker_tls_ca)
            except (OSError, ValueError) as exc:
                raise ConfigError("broker.tls_ca %s is not a readable PEM CA certificate: %s"
                                  % (cfg.broker_tls_ca, exc)) from None
    base = int(existing["base_port"]) if existing is not None else cfg.base_port
    if base:
        for i in range(cfg.nodes):
            ports.append(("ledger peer port of node %d" % i, cfg.ledger_host, base + i))
            ports.append(("ledger client port of node %d" % i, cfg.ledger_host, base + CLIENT_PORT_OFFSET + i))
    if cfg.http_port:
        ports.append(("gateway.http_port", cfg.http_host, cfg.http_port))
    seen: dict[int, str] = {}
    for label, host, port in ports:
        if port in seen:
            raise ConfigError("%s and %s are both port %d: give them different ports" % (seen[port], label, port))
        seen[port] = label
        if not _bind_free(host, port):
            raise ConfigError("%s %s:%d is in use or not bindable: stop what uses it (another `ledgerlink up`?) "
                              "or choose another port" % (label, host, port))
    return existing


# --- first run: keys and genesis ------------------------------------------------------------------------


def make_ledger(cfg: UpConfig) -> list[str]:
    """Write validator, gateway and admin keys (the admin's to ``admin_key`` when it names a file not there
    yet; a configured key that exists is used), genesis and cluster.json, all or nothing; return what was made."""
    from ledgerlink.ledger.cluster import free_base_port, generate

    be = get_backend("cpython")
    cfg.data_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".ledger-", dir=cfg.data_dir))
    new_admin = cfg.admin_key_given and not cfg.admin_key_path.exists()
    made = []
    try:
        base = cfg.base_port or free_base_port(cfg.nodes, cfg.ledger_host)
        path = generate(tmp, cfg.nodes, base, cfg.chain_id, threshold=cfg.threshold)
        data = json.loads(path.read_text())
        data["host"] = cfg.ledger_host
        if new_admin:
            fd = os.open(cfg.admin_key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as out:
                out.write((tmp / "keys" / "admin.key").read_bytes())
            (tmp / "keys" / "admin.key").unlink()
            made.append("admin key %s (mode 0600; the ledger's genesis admin)" % cfg.admin_key_path)
        elif cfg.admin_key_given:
            admin_pub = be.public_key(read_key(cfg.admin_key_path, "admin key"), True)
            data["genesis"]["admins"] = [{"key": admin_pub.hex(), "attributes": {"name": "admin"}}]
            (tmp / "keys" / "admin.key").unlink()
        else:
            made.append("admin key %s (mode 0600; the ledger's genesis admin)" % cfg.admin_key_path)
        path.write_text(json.dumps(data, indent=2) + "\n")
        os.rename(tmp, cfg.ledger_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if new_admin:
            cfg.admin_key_path.unlink(missing_ok=True)
        raise
    made.append("%d validator keys, the gateway's ledger key, genesis and cluster.json in %s"
                % (cfg.nodes, cfg.ledger_dir))
    return made


def _admin_warning(cfg: UpConfig, cluster: dict[str, Any]) -> str | None:
    be = get_backend("cpython")
    pub = be.public_key(read_key(cfg.admin_key_path, "admin key"), True).hex()
    admins = [a["key"] if isinstance(a, dict) else a for a in cluster.get("genesis", {}).get("admins", [])]
    if pub not in admins:
        return ("warning: admin key %s is not a genesis admin of this ledger; its transactions are refused "
                "unless it was registered with role admin" % cfg.admin_key_path)
    return None


# --- the running site -----------------------------------------------------------------------------------


def _make_stack_class() -> type:
    from ledgerlink.tools import stack as st

    class UpStack(st.Stack):
        """``Stack`` with the broker, gateway HTTP and MQTT addresses of an ``up`` config."""

        def __init__(self, cfg: UpConfig, progress: Any, broker: str | None = None) -> None:
            super().__init__(cfg.data_dir, cfg.site, cfg.nodes, limits=cfg.limits, batch=cfg.batch, progress=progress,
                             broker=broker, broker_bind=cfg.broker_host, broker_port=cfg.broker_port,
                             gateways=cfg.gateway_processes, dashboard_login=True,
                             broker_tls_port=cfg.broker_tls_port)
            self.cfg = cfg

        def start(self, timeout: float = 60.0) -> None:
            self._anon_setup()
            self._peer_accounts()
            self._updates_account()
            if self.cfg.broker_external is None:
                super().start(timeout)
                self._peer_setup(timeout)
                return
            self.data_dir.mkdir(parents=True, exist_ok=True)
            try:
                self.broker_host, self.broker_port = self.cfg.broker_external
                self.progress("MQTT broker: external at %s:%d" % self.cfg.broker_external)
                self._external_accounts()
                self._start_cluster(timeout)
                self._start_gateway(timeout)
            except BaseException:
                self.stop()
                raise
            self._peer_setup(timeout)

        def _peer_accounts(self) -> None:
            """The directory's broker accounts (its own and its broker admin's), disabled before the broker starts
            when the site turned peer sessions off since an earlier run, enabled again when it turns them on."""
            from ledgerlink.tools.pair_access import DIRECTORY_ADMIN, directory_username

            accounts = self.access.load()
            changed = [u for u in (directory_username(self.site), DIRECTORY_ADMIN)
                       if u in accounts and bool(accounts[u].get("disabled")) == self.cfg.peer]
            if changed:
                self.access.write_runtime("starting", self.broker_host, self.broker_port)
                for username in changed:
                    self.access.set_disabled(username, not self.cfg.peer)

        def _updates_account(self) -> None:
            """The update service's broker account (the only one that may publish on the devices' fw topics),
            disabled before the broker starts when the site turned updates off since an earlier run, enabled
            again when it turns them on."""
            from ledgerlink.tools.admin_release import UPDATES_USER

            account = self.access.load().get(UPDATES_USER)
            if account is not None and bool(account.get("disabled")) == self.cfg.updates:
                self.access.write_runtime("starting", self.broker_host, self.broker_port)
                self.access.set_disabled(UPDATES_USER, not self.cfg.updates)

        def _updates_admin_key(self) -> bytes:
            """The configured admin key (``admin_key``) registers the update service's relay key."""
            return read_key(self.cfg.admin_key_path, "admin key")

        def _peer_setup(self, timeout: float) -> None:
            """The site's directory, only when the config asks for peer sessions (``peer.enabled``); the update
            service, only when it asks for updates (``updates.enabled``)."""
            if not self.cfg.peer and not self.cfg.updates:
                return
            try:
                if self.cfg.peer:
                    self.start_directory(timeout)
                if self.cfg.updates:
                    self.start_updates(timeout)
            except BaseException:
                self.stop()
                raise

        def _external_accounts(self) -> None:
            """The site's accounts on the external broker, or what the operator must set up there."""
            from ledgerlink.tools.broker_access import AccessError, external_advice, private_dir

            private_dir(self.data_dir)
            if self.cfg.broker_admin_login is None:
                self.progress(external_advice(self.site, self.broker_host, self.broker_port))
                if self.cfg.anon:
                    self.progress("anonymous sessions: also make there the accounts of %s with the roles anon (no "
                                  "client id bound), anon-fog and anon-cloud of ledgerlink.tools.broker_access, "
                                  "logins in %s" % (self.access.accounts_path, self.access.folder / "credentials"))
                return
            try:
                lines = self.access.sync_external(self.broker_host, self.broker_port, self.cfg.broker_admin_login,
                                                  len(self.gateways), self.cfg.broker_tls_ca)
            except AccessError as exc:
                raise st.StackError(str(exc)) from None
            for line in lines:
                self.progress(line)

        def _anon_setup(self) -> None:
            """The fog request key (made once, 0600) and the broker accounts of anonymous sessions, made (or,
            when the site turned them off, disabled) before the broker starts, so nothing is sent to a broker
            of an earlier run."""
            from ledgerlink.tools.broker_access import ANON_ROLES, write_private

            if not self.cfg.anon:
                if any(a["role"] in ANON_ROLES and not a.get("disabled") for a in self.access.load().values()):
                    self.access.write_runtime("starting", self.broker_host, self.broker_port)
                    self.access.anon_accounts(len(self.gateways), enabled=False)
                return
            if not self.cfg.anon_fog_key.exists():
                self.cfg.anon_fog_key.parent.mkdir(parents=True, exist_ok=True)
                write_private(self.cfg.anon_fog_key, self.crypto.generate_private_key().hex() + "\n")
                self.progress("made: the fog's anonymous-session request key %s (mode 0600)" % self.cfg.anon_fog_key)
            self.access.write_runtime("starting", self.broker_host, self.broker_port)
            self.access.anon_accounts(len(self.gateways))

        def _gateway_config(self, http_host: str, http_port: int, index: int = 1) -> dict:
            cfg = super()._gateway_config(http_host, http_port, index)
            if self.cfg.anon:
                from ledgerlink.tools.broker_access import anon_fog_username

                username = anon_fog_username(self.site, index)
                cfg["anon"] = {"fog_key": str(self.cfg.anon_fog_key), "cloud_public": self.cfg.anon_cloud_public.hex(),
                               "store": ANON_STORE, "client_id": username,
                               "credentials": str(self.access.credentials_path(username))}
            if self.cfg.broker_external is not None and self.cfg.broker_tls_ca is not None:
                cfg["mqtt"]["tls"] = {"ca": str(self.cfg.broker_tls_ca)}
            return cfg

        def _gateway_http(self, index: int) -> tuple[str, int]:
            """The configured dashboard address for the first gateway (kept across restarts), a free port for
            the others."""
            if index == 1 and not self.cfg.http_port and self.dashboard_url:
                return super()._gateway_http(index)
            return (self.cfg.http_host, self.cfg.http_port if index == 1 else 0)

    return UpStack


class _Stop(Exception):
    """SIGINT or SIGTERM."""


_received: list[str] = []      # signals seen: the raise is lost when one lands in a fork hook or finalizer


def _raise_stop(signum: int, frame: Any) -> None:
    _received.append(signal.Signals(signum).name)
    raise _Stop(_received[-1])


def _ignore_signals() -> None:
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)


def _summary(stack: Any, cfg: UpConfig) -> list[str]:
    be = get_backend("cpython")
    c = stack.cluster.config
    admin_pub = be.public_key(read_key(cfg.admin_key_path, "admin key"), True)
    from ledgerlink.ledger.state.encoding import device_id
    from ledgerlink.protocol.spv import quorum
    from ledgerlink.tools.stack import UPDATES_RELAY_KEY

    lines = ["broker: mqtt://%s:%d (MQTT 5; devices use ll/%s/dev/<device-id>/up, reg, session; replies on .../down)"
             % (stack.broker_host, stack.broker_port, cfg.site),
             "broker TLS: mqtts://%s:%d (clients check it against the site CA %s)"
             % (stack.broker_host, stack.broker_tls_port, stack.tls["ca"]) if stack.tls else
             "broker TLS: as the external broker offers it",
             "broker accounts: %s (no anonymous clients; each account's login in %s/<username>.json, mode 0600; "
             "devices get theirs from `ledgerlink provision`)" % (stack.access.accounts_path,
                                                                  stack.access.folder / "credentials")
             if cfg.broker_external is None or cfg.broker_admin_login is not None else
             "broker accounts: the external broker's own (see above)",
             "ledger: chain %r, %d nodes; client ports %s" % (
                 c.chain_id, c.n, ", ".join("%s:%d" % (a.host, a.client_port) for a in c.nodes)),
             "cluster config (trust anchor: chain id + validator keys): %s" % cfg.cluster_path]
    for a in c.nodes:
        lines.append("  validator %d: %s (key file %s)" % (a.index, a.pubkey.hex(), a.key_file))
    group = c.genesis.get("group_key")
    lines.append("threshold headers: group key %s (t = %d of %d; signing shares beside the validator keys)"
                 % (group, quorum(c.n), c.n) if group else
                 "threshold headers: off (headers certified by 2f+1 votes; ledger.threshold)")
    lines.append("admin key: %s (device %s); e.g. ledgerlink admin --up-config %s validators"
                 % (cfg.admin_key_path, device_id(admin_pub).hex(), cfg.path))
    lines.append("gateway: device %s, log %s" % (stack.gateway_id.hex(), cfg.data_dir / "gateway.log"))
    ca_key = read_key(cfg.data_dir / "ledger" / "keys" / "gw-ca.key", "fog CA key")
    lines.append("board configs: chain_id %r, ca_public %s (the fog CA key), validator_keys%s as above"
                 % (c.chain_id, be.public_key(ca_key, True).hex(), " and group_key" if group else ""))
    lines.append("dashboard: %s (metrics at %smetrics; log in with the token in %s)"
                 % (stack.dashboard_url, stack.dashboard_url, cfg.data_dir / "dashboard.token")
                 if stack.dashboard_url else "dashboard: not started (see the gateway log)")
    if cfg.anon:
        from ledgerlink.tools.broker_access import anon_cloud_username, anon_username

        lines.append("anonymous sessions: on; fog request key %s, escrow key %s; devices share the login %s and "
                     "connect with a fresh client id per session; the cloud side's login %s"
                     % (be.public_key(read_key(cfg.anon_fog_key, "anon.fog_key"), True).hex(),
                        cfg.anon_cloud_public.hex(), stack.access.credentials_path(anon_username(cfg.site)),
                        stack.access.credentials_path(anon_cloud_username(cfg.site))))
    else:
        lines.append("anonymous sessions: off (anon.enabled)")
    lines.append("peer sessions: on; the directory (discovery, pair topics) logs to %s"
                 % (cfg.data_dir / "directory.log") if cfg.peer else "peer sessions: off (peer.enabled)")
    lines.append("updates: on; the update service (account ll-updates) serves the releases of %s, relays the "
                 "devices' version statements to the ledger with %s, logs to %s"
                 % (cfg.data_dir / "ledger" / "releases", cfg.data_dir / "ledger" / "keys" / UPDATES_RELAY_KEY,
                    cfg.data_dir / "updates.log") if cfg.updates
                 else "updates: off (updates.enabled)")
    lines.append("processes: %s" % " ".join(str(p) for p in stack.pids()))
    return lines


def _first_run_files(stack: Any, cfg: UpConfig) -> dict[Path, str]:
    """Files a site's first start makes beside the ledger, with what each is."""
    from ledgerlink.tools.broker_access import TLS_DIR

    return {stack.access.accounts_path: "broker accounts and ACLs (gateways, consumer, broker admin)",
            stack.access.folder / TLS_DIR / "ca.pem": "site CA (the broker's TLS certificate is signed by it)",
            cfg.ledger_dir / "keys" / "gw-ca.key": "the gateway's fog CA key (ECQV session certificates)"}


def run(cfg: UpConfig, broker: str | None = None) -> int:
    """Start the site of ``cfg``, print where everything is, run until SIGINT/SIGTERM; the exit status.

    ``broker``: auto, mosquitto or embedded (None: $LEDGERLINK_BROKER, else auto).
    """
    from ledgerlink.tools.stack import StackError

    existing = preflight(cfg, broker)
    t0 = time.monotonic()

    def say(line: str) -> None:
        print("[%6.1fs] %s" % (time.monotonic() - t0, line), flush=True)

    _received.clear()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _raise_stop)
    stack = None
    started = False
    try:
        say("ledgerlink up: site %r, data in %s" % (cfg.site, cfg.data_dir))
        if existing is None:
            for line in make_ledger(cfg):
                say("made: " + line)
        else:
            warning = _admin_warning(cfg, existing)
            if warning:
                say(warning)
        stack = _make_stack_class()(cfg, say, broker)
        fresh = {path: what for path, what in _first_run_files(stack, cfg).items() if not path.exists()}
        stack.start()
        started = True
        for path, what in fresh.items():
            if path.exists():
                say("made: %s %s" % (what, path))
        for line in _summary(stack, cfg):
            say(line)
        say("ready: Ctrl-C or SIGTERM stops")
        while True:
            if _received:
                raise _Stop(_received[0])
            time.sleep(SUPERVISE_S)
            for line in stack.supervise() + stack.follow_bans():
                say(line)
    except _Stop as stop:
        _ignore_signals()
        say("%s: stopping" % stop)
        if stack is not None:
            stack.stop()
        say("stopped")
        return 0 if started else 130
    except (StackError, RuntimeError, TimeoutError, OSError, ConfigError) as exc:
        _ignore_signals()
        if stack is not None:
            stack.stop()
        print("ledgerlink up: error: %s" % exc, file=sys.stderr, flush=True)
        return EXIT_FAILED


def print_status(cfg: UpConfig) -> int:
    """Print each part of the site from ``data_dir/status.json``; 1 when there is none or a part is down."""
    path = cfg.data_dir / "status.json"
    try:
        status = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        print("ledgerlink up: no site status in %s (%s): is the site running?" % (path, exc), file=sys.stderr)
        return EXIT_FAILED
    age_s = (time.time() * 1000 - status["time_ms"]) / 1000
    print("site %r, status written %.0f s ago" % (cfg.site, age_s))
    for part in status["parts"]:
        print("%-20s %-10s pid %-8s restarts %d%s" % (part["name"], part["state"], part["pid"] or "-", part["restarts"],
                                                      "" if part["last_exit"] is None
                                                      else ", last exit status %s" % part["last_exit"]))
    return 0 if all(p["state"] == "running" for p in status["parts"]) else EXIT_FAILED


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="ledgerlink up", description=__doc__.split("\n")[0].replace("`", ""),
                                epilog="Config format: see the module docstring of ledgerlink.tools.up "
                                       "and tools/up.example.json.")
    p.add_argument("--config", required=True, metavar="FILE", help="site config (JSON, or TOML ending in .toml)")
    p.add_argument("--check", action="store_true", help="only check the config and the machine, start nothing")
    p.add_argument("--status", action="store_true",
                   help="print what the running site's supervisor last wrote (data_dir/status.json) and exit")
    p.add_argument("--broker", choices=("auto", "mosquitto", "embedded"), default=None,
                   help="MQTT broker to start unless broker.external is set: mosquitto, embedded (in Python) or "
                        "auto (default, or $LEDGERLINK_BROKER): mosquitto when installed, else embedded")
    args = p.parse_args(argv)
    try:
        cfg = load_config(args.config)
        if args.status:
            return print_status(cfg)
        if args.check:
            preflight(cfg, args.broker)
            print("config %s is usable: site %r, data in %s" % (args.config, cfg.site, cfg.data_dir))
            return 0
        return run(cfg, args.broker)
    except ConfigError as exc:
        print("ledgerlink up: config error: %s" % exc, file=sys.stderr)
        return EXIT_CONFIG
    except KeyboardInterrupt:
        print("ledgerlink up: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
