"""One site on one machine: an MQTT broker, a ledger cluster and a gateway, as child processes.

``Stack(data_dir).start()`` starts an MQTT broker on a free loopback port, a ``LocalCluster`` (keys and
genesis in ``data_dir/ledger``, reused when present), writes the gateway's fog CA and site keys and its
config, and starts ``ledgerlink.gateway.main``; ``stop()`` stops them in reverse order (SIGTERM, then
SIGKILL after a timeout). Children run in their own sessions, so a Ctrl-C in the terminal reaches only
the owning process, which then stops them in order; on Linux they get SIGTERM when the process that
started them dies, so a killed owner leaves no orphans. Logs: ``data_dir/mosquitto.log`` (or
``data_dir/mqtt_broker.log``), ``data_dir/ledger/node<i>.log``, ``data_dir/gateway.log``. The admin key
(``ledger/keys/admin.key``) signs the register and ban transactions of ``register`` and ``ban``.
Private keys are never printed.

The gateway speaks MQTT 5 (shared subscriptions, manual acks, session expiry), so the broker must be
an MQTT 5 broker. ``broker`` chooses it: "mosquitto" (``find_mosquitto`` looks on PATH and at
/usr/sbin/mosquitto), "embedded" (``python3 -m ledgerlink.tools.mqtt_broker`` as a child process), or
"auto" (the default, also from $LEDGERLINK_BROKER): mosquitto when installed, else the embedded broker.

``gateways`` gateway processes share the site's subscription group and store (``gateway.json`` and
``gateway.log`` for the first, ``gateway-<i>.json`` and ``gateway-<i>.log`` for the others; only the
first serves the dashboard on the given HTTP address, the others on a free loopback port).

Supervision: ``supervise()``, called every fraction of a second by whoever runs the site
(``ledgerlink up``, the chaos tool), starts again every part that exited without being asked to
(broker, a ledger node, a gateway, the directory), after a delay of ``RESTART_FIRST_S`` doubled for each crash in a
row up to ``RESTART_MAX_S`` (a part that ran ``STABLE_S`` starts over at the first delay); the other
parts keep running. It returns one line per event ("... exited ...; starting it again in D s",
"... restarted") and writes, at each event and every ``STATUS_EVERY_S``, ``data_dir/status.json`` (each
part: pid, state, restarts, last exit status) and
``data_dir/status.prom`` (Prometheus text: ``ledgerlink_site_restarts_total``,
``ledgerlink_site_part_up``, for a node exporter's text-file collector).

Warm standby (``warm_standby``, on by default): once every gateway process runs and has subscribed,
``supervise`` keeps ``min(gateways, MAX_STANDBYS)`` spare interpreters that have imported the gateway
and wait (``ledgerlink.gateway.main --standby``, output to ``gateway-standby.log`` until used); a
crashed gateway is started again from one of them (its config and log named on its input), which saves
the interpreter's start and imports (about 0.4 s of CPU, several seconds on a loaded machine: most of
the time from a restart to its first new receipt, ``python3 -m ledgerlink.tools.chaos --timeline``).
A standby costs the memory of an idle interpreter with the gateway's modules (about 35 MB), holds no
file or connection, and ends with the site (the end of its input, or the parent-death signal). It runs
the code it imported: after an upgrade, restart the site.
"""

from __future__ import annotations

import functools
import json
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from ledgerlink.core.backend import get_backend
from ledgerlink.ledger.client import LedgerClient, LedgerUnavailable
from ledgerlink.ledger.cluster import LocalCluster, write_key
from ledgerlink.ledger.state import encoding as enc
from ledgerlink.protocol.ledger_tx import REASON_OK
from ledgerlink.tools.broker_access import (DASHBOARD_TOKEN_FILE, SiteAccess, consumer_username, dashboard_token,
                                            device_username, gateway_username, mosquitto_tls_lines, private_dir,
                                            private_log, site_tls)

MOSQUITTO_PATHS = ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto")
INSTALL_HINT = ("--broker mosquitto needs mosquitto: install it (apt-get install mosquitto) "
                "or use --broker embedded")
BROKER_CHOICES = ("auto", "mosquitto", "embedded")
BROKER_ENV = "LEDGERLINK_BROKER"
QUEUED_PER_CLIENT = 100_000
QUEUED_BYTES_PER_CLIENT = 256 << 20   # bytes queued per client: bounds a stalled gateway's backlog in memory
INFLIGHT_PER_CLIENT = 1000
MESSAGE_SIZE_LIMIT = 64 << 10         # largest PUBLISH payload: a device frame is a few hundred bytes
PACKET_SIZE_LIMIT = MESSAGE_SIZE_LIMIT + (4 << 10)   # largest MQTT packet (payload, topic and properties)
MAX_CONNECTIONS = 10_000              # client connections to the site's broker
MAX_KEEPALIVE_S = 300                 # keep alive granted at most (MQTT 5 server keep alive), so idle links end
AUTOSAVE_S = 1                        # mosquitto writes its persistence file this often
RESTART_FIRST_S = 0.5                 # delay before a crashed part is started again; doubled per crash in a row
RESTART_MAX_S = 30.0
DIRECTORY_LOG = "directory.log"
DIRECTORY_READY = b"directory of site"      # what the directory logs once it subscribed
UPDATES_LOG = "updates.log"
UPDATES_READY = b"update service of site"   # what the update service logs once it subscribed
UPDATES_RELAY_KEY = "updates-relay.key"    # in data_dir/ledger/keys: submits the devices' version statements
MAX_STANDBYS = 2                      # warm standby interpreters kept for gateway restarts (at most one per gateway)
STANDBY_LOG = "gateway-standby.log"   # a standby's output until it becomes a gateway
STABLE_S = 60.0                       # a part that ran this long counts its next crash as the first in a row
STATUS_EVERY_S = 5.0                  # status files are written at least this often (and at each event)
PR_SET_PDEATHSIG = 1


class StackError(Exception):
    """A part of the stack did not start or a ledger transaction was refused."""


class BrokerMissing(StackError):
    """No mosquitto executable was found."""


def find_mosquitto() -> str | None:
    """Path of the mosquitto executable (PATH first), or None."""
    found = shutil.which("mosquitto")
    if found:
        return found
    for p in MOSQUITTO_PATHS:
        if os.path.isfile(p) and os.access(p, os.X_OK):
            return p
    return None


def choose_broker(choice: str | None = None) -> tuple[str, str | None]:
    """``("mosquitto", path)`` or ``("embedded", None)`` for ``choice`` (None: $LEDGERLINK_BROKER, else auto).

    Raises BrokerMissing when mosquitto is asked for and not installed, StackError for an unknown choice.
    """
    if choice is None:
        choice = os.environ.get(BROKER_ENV) or "auto"
    if choice not in BROKER_CHOICES:
        raise StackError("unknown MQTT broker %r (choose %s)" % (choice, ", ".join(BROKER_CHOICES)))
    if choice == "embedded":
        return "embedded", None
    path = find_mosquitto()
    if path is not None:
        return "mosquitto", path
    if choice == "mosquitto":
        raise BrokerMissing(INSTALL_HINT)
    return "embedded", None


def wait_listening(proc: subprocess.Popen, name: str, host: str, port: int, log: Path, timeout: float) -> None:
    """Wait until ``host:port`` accepts connections; StackError when ``proc`` exits or time runs out."""
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise StackError("%s exited with %s (see %s)" % (name, proc.returncode, log))
        try:
            socket.create_connection((host, port), timeout=0.2).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise StackError("%s did not listen on %s:%d (see %s)" % (name, host, port, log)) from None
            time.sleep(0.05)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def now_ms() -> int:
    return int(time.time() * 1000)


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _child_setup() -> None:
    """In the child before exec: own session (no terminal SIGINT); SIGTERM when the parent dies (Linux)."""
    os.setsid()
    os.umask(0o077)                 # the gateway's store, the ledger's blocks, the broker's files: owner only
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass


def spawn(cmd: Sequence[str], log: Any, keep: Callable[[subprocess.Popen], None],
          stdin: int = subprocess.DEVNULL) -> subprocess.Popen:
    """Start ``cmd`` with ``_child_setup``, output to the open file ``log``, and hand the process to ``keep``
    before a SIGINT or SIGTERM that arrived meanwhile is handled.

    A ``preexec_fn`` makes Python run its fork hooks, and an exception that a signal handler raises inside
    one is printed and dropped. So, in the main thread, the handlers only note a stop signal while the
    child starts; the signal is raised again once ``keep`` has the process, so its handler runs with
    nothing lost.
    """
    def start() -> subprocess.Popen:
        proc = subprocess.Popen(list(cmd), stdout=log, stderr=subprocess.STDOUT, stdin=stdin,
                                preexec_fn=_child_setup)
        keep(proc)
        return proc

    if threading.current_thread() is not threading.main_thread():
        return start()
    caught: list[int] = []
    previous = {sig: signal.signal(sig, lambda signum, frame: caught.append(signum)) for sig in STOP_SIGNALS}
    try:
        proc = start()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, signal.SIG_DFL if handler is None else handler)
        for sig in dict.fromkeys(caught):
            signal.raise_signal(sig)
    return proc


def stop_process(p: subprocess.Popen | None, timeout: float = 10.0) -> None:
    """SIGTERM ``p`` (if running) and wait; SIGKILL after ``timeout`` seconds."""
    if p is None or p.poll() is not None:
        return
    p.send_signal(signal.SIGTERM)
    try:
        p.wait(timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()


def mosquitto_config(data_dir: Path, bind: str, port: int, access: str = "allow_anonymous true\n") -> str:
    """The text of the site's ``mosquitto.conf`` (one place for every broker setting of ``ledgerlink up``).

    - persistence: sessions, subscriptions and queued QoS 1 frames are written to ``data_dir/mosquitto.db``
      every ``AUTOSAVE_S`` and at exit, so a restarted broker still holds what it acknowledged (frames
      taken in the last interval before a SIGKILL are not; devices send a frame again until the gateway
      acknowledges it).
    - user: the broker keeps the owner's identity (a switch would also clear its parent-death signal).
    - max_queued_messages/bytes: QoS 1 frames for a gateway that falls behind wait instead of being
      dropped, up to a bound.
    - max_inflight_messages: also the Receive Maximum mosquitto announces, i.e. how many QoS 1 publishes a
      client (the gateway's republishes and receipts, a load generator) may have awaiting the broker's
      PUBACK (default 20).
    - limits: ``message_size_limit`` and ``max_packet_size`` (a device frame is at most a few KiB),
      ``max_connections`` on the listener, ``max_keepalive`` (MQTT 5 clients asking for none or more are
      told this one, so a silent connection ends).
    - access: the lines of ``SiteAccess.mosquitto_lines`` (accounts and ACLs; ``ledgerlink.tools.broker_access``).
    """
    return ("listener %d %s\nmax_connections %d\n%s"
            "persistence true\npersistence_location %s/\npersistence_file mosquitto.db\nautosave_interval %d\n"
            "user %s\nmax_queued_messages %d\nmax_queued_bytes %d\nmax_inflight_messages %d\n"
            "message_size_limit %d\nmax_packet_size %d\nmax_keepalive %d\n"
            % (port, bind, MAX_CONNECTIONS, access, data_dir.resolve(), AUTOSAVE_S, pwd.getpwuid(os.geteuid()).pw_name,
               QUEUED_PER_CLIENT, QUEUED_BYTES_PER_CLIENT, INFLIGHT_PER_CLIENT, MESSAGE_SIZE_LIMIT,
               PACKET_SIZE_LIMIT, MAX_KEEPALIVE_S))


class _SessionCluster(LocalCluster):
    """``LocalCluster`` whose node processes are started with ``_child_setup``."""

    def start_node(self, i: int) -> None:
        if i in self.procs and self.procs[i].poll() is None:
            return
        with private_log(self.data_dir / ("node%d.log" % i)) as log:
            spawn([sys.executable, "-m", "ledgerlink.ledger.node", "--config", str(self.config_path),
                   "--index", str(i), "--data", str(self.data_dir / ("node%d" % i)), "--log-level", self.log_level],
                  log, functools.partial(self.procs.__setitem__, i))


class Stack:
    """Broker, ledger cluster and gateway of site ``site`` with their state in ``data_dir``.

    ``limits`` and ``batch`` go into the gateway config unchanged (see ``ledgerlink.gateway.main``).
    ``progress`` receives one line per started part. ``broker``: auto, mosquitto or embedded (None:
    $LEDGERLINK_BROKER, else auto); it listens on ``broker_bind``:``broker_port`` (0: a free port).
    ``gateways``: gateway processes in the site's shared subscription.
    """

    def __init__(self, data_dir: str | Path, site: str = "demo", nodes: int = 4,
                 limits: dict[str, Any] | None = None, batch: dict[str, Any] | None = None,
                 progress: Callable[[str], None] | None = None, broker: str | None = None,
                 broker_bind: str = "127.0.0.1", broker_port: int = 0, gateways: int = 1,
                 dashboard_login: bool = False, broker_tls_port: int = 0, warm_standby: bool = True,
                 threshold: bool = False) -> None:
        self.data_dir = Path(data_dir)
        self.threshold = threshold                  # a new ledger's validators run the FROST DKG (cluster.generate)
        self.site = site
        self.nodes = nodes
        self.limits = dict(limits or {})
        self.batch = dict(batch or {"max": 256, "interval_ms": 100})
        self.progress = progress or (lambda line: None)
        self.broker_choice = broker
        self.broker_kind: str | None = None
        self.broker_bind = broker_bind
        self.broker_host = "127.0.0.1" if broker_bind in ("0.0.0.0", "::", "") else broker_bind
        self.broker: subprocess.Popen | None = None
        self.broker_port = broker_port
        self.broker_tls_port = broker_tls_port     # the broker's TLS listener (0: a free port)
        self.tls: dict[str, Path] = {}              # the site CA and the broker's certificate (broker_access.site_tls)
        self.mosquitto: str | None = None
        self.dashboard_url: str | None = None
        self.gateways: list[subprocess.Popen | None] = [None] * gateways
        self.cluster: _SessionCluster | None = None
        self.ledger: LedgerClient | None = None
        self.crypto = get_backend("cpython")
        self.access = SiteAccess(self.data_dir / "broker", site)
        self.dashboard_login = dashboard_login
        self.followed: int | None = None            # ledger height whose bans the broker accounts reflect
        self.parts: dict[str, _Part] = {}
        self.stopping = False
        self.standbys: list[subprocess.Popen] = []          # warm standbys of the gateways (``supervise``)
        self.directory: subprocess.Popen | None = None      # the site's directory (``start_directory``)
        self.updates: subprocess.Popen | None = None        # the site's update service (``start_updates``)
        self.warm_standby = warm_standby
        self.status_written = float("-inf")

    @property
    def gateway(self) -> subprocess.Popen | None:
        """The first gateway process (the one with the dashboard)."""
        return self.gateways[0]

    @gateway.setter
    def gateway(self, proc: subprocess.Popen | None) -> None:
        self.gateways[0] = proc

    # --- facts other code needs -----------------------------------------------------------------------

    @property
    def chain_id(self) -> str:
        return self._cluster().config.chain_id

    @property
    def validators(self) -> list[bytes]:
        return list(self._cluster().config.validators)

    @property
    def group_key(self) -> bytes | None:
        """The validators' FROST group key from the genesis (None: headers are certified by votes only)."""
        group = self._cluster().config.genesis.get("group_key")
        return bytes.fromhex(group) if group else None

    def public_key(self, name: str) -> bytes:
        """Compressed public key of ``ledger/keys/<name>.key`` (gateway, gw-ca, gw-site, admin)."""
        return self.crypto.public_key(self._cluster().key(name), True)

    @property
    def gateway_id(self) -> bytes:
        return enc.device_id(self.public_key("gateway"))

    def pids(self) -> list[int]:
        """Process ids of the running children."""
        procs = ([self.broker, *self.gateways, self.directory, self.updates]
                 + (list(self.cluster.procs.values()) if self.cluster else []))
        return [p.pid for p in procs if p is not None and p.poll() is None]

    def _cluster(self) -> _SessionCluster:
        if self.cluster is None:
            raise StackError("the stack is not started")
        return self.cluster

    def _ledger(self) -> LedgerClient:
        if self.ledger is None:
            raise StackError("the stack is not started")
        return self.ledger

    # --- lifecycle ------------------------------------------------------------------------------------

    @property
    def broker_name(self) -> str:
        return "the embedded MQTT broker" if self.broker_kind == "embedded" else "mosquitto"

    @property
    def broker_log(self) -> Path:
        return self.data_dir / ("mqtt_broker.log" if self.broker_kind == "embedded" else "mosquitto.log")

    def start(self, timeout: float = 60.0) -> None:
        """Start broker, cluster and gateway; on any failure stop what was started and raise."""
        kind, mosquitto = choose_broker(self.broker_choice)
        self.broker_kind = kind
        private_dir(self.data_dir)
        try:
            self._start_broker(mosquitto, timeout)
            self._start_cluster(timeout)
            self._start_gateway(timeout)
        except BaseException:
            self.stop()
            raise

    def _start_broker(self, mosquitto: str | None, timeout: float) -> None:
        """Start mosquitto (``mosquitto`` is its path) or, when it is None, the embedded broker."""
        self.broker_port = self.broker_port or free_port(self.broker_host)
        self.mosquitto = mosquitto
        self.broker_tls_port = self.broker_tls_port or free_port(self.broker_host)
        self.access.write_runtime("starting", self.broker_host, self.broker_port)
        self.access.site_accounts(len(self.gateways))
        hosts = [h for h in (self.broker_host, self.broker_bind) if h not in ("0.0.0.0", "::", "")]
        self.tls = site_tls(self.access.folder, self.site, hosts + ([socket.gethostname()] if len(hosts) < 2 else []))
        if mosquitto is not None:
            (self.data_dir / "mosquitto.conf").write_text(mosquitto_config(
                self.data_dir, self.broker_bind, self.broker_port, self.access.mosquitto_lines()
                + mosquitto_tls_lines(self.tls, self.broker_bind, self.broker_tls_port, MAX_CONNECTIONS)))
        self._spawn_broker()
        wait_listening(self.broker, self.broker_name, self.broker_host, self.broker_port, self.broker_log, timeout)
        wait_listening(self.broker, self.broker_name, self.broker_host, self.broker_tls_port, self.broker_log, timeout)
        self.access.write_runtime(self.broker_kind or "embedded", self.broker_host, self.broker_port)
        if mosquitto is not None:
            self.progress("MQTT broker: mosquitto on %s:%d (%s)" % (self.broker_bind, self.broker_port, mosquitto))
        else:
            self.progress("MQTT broker: embedded (ledgerlink.tools.mqtt_broker, MQTT 5 and 3.1.1%s) on %s:%d"
                          % ("" if find_mosquitto() else "; mosquitto is not installed",
                             self.broker_bind, self.broker_port))

    def _spawn_broker(self) -> None:
        """Start the broker process (its config already written); does not wait for it to listen."""
        if self.mosquitto is not None:
            cmd = [self.mosquitto, "-c", str(self.data_dir / "mosquitto.conf")]
        else:
            cmd = [sys.executable, "-m", "ledgerlink.tools.mqtt_broker", "--host", self.broker_bind,
                   "--port", str(self.broker_port), "--max-queued", str(QUEUED_PER_CLIENT),
                   "--max-packet-size", str(PACKET_SIZE_LIMIT), "--max-connections", str(MAX_CONNECTIONS),
                   "--max-keepalive", str(MAX_KEEPALIVE_S), "--accounts", str(self.access.accounts_path),
                   "--tls-port", str(self.broker_tls_port), "--tls-dir", str(self.tls["ca"].parent)]
        with private_log(self.broker_log) as log:
            spawn(cmd, log, functools.partial(setattr, self, "broker"))

    def _start_cluster(self, timeout: float) -> None:
        ledger_dir = self.data_dir / "ledger"
        self.cluster = _SessionCluster(ledger_dir, self.nodes, threshold=self.threshold)
        self.cluster.start(timeout)
        self.ledger = LedgerClient(self.cluster.config_path)
        cfg = self.cluster.config
        ports = ", ".join(str(a.client_port) for a in cfg.nodes)
        self.progress("ledger: chain %r, %d PBFT nodes on 127.0.0.1 (client ports %s), height %d"
                      % (cfg.chain_id, cfg.n, ports, self.height()))

    def _gateway_config(self, http_host: str, http_port: int, index: int = 1) -> dict:
        """Config of gateway process ``index`` (1 first; its fog CA and site keys made on first use), paths
        relative to ``data_dir``."""
        self.dashboard_token                          # noqa: B018 - the token file exists before the gateway reads it
        keys = self.data_dir / "ledger" / "keys"
        login = self.access.credentials_path(gateway_username(self.site, index))
        for name in ("gw-ca", "gw-site"):
            if not (keys / (name + ".key")).exists():
                write_key(keys / (name + ".key"), self.crypto.generate_private_key())
        return {
            "site": self.site,
            "mqtt": {"host": self.broker_host, "port": self.broker_port,
                     "client_id": gateway_username(self.site, index),
                     **({"credentials": str(login.relative_to(self.data_dir))} if login.exists() else {})},
            "store": "gateway.db",
            "keys": {"identity": "ledger/keys/gateway.key", "ca": "ledger/keys/gw-ca.key",
                     "site": "ledger/keys/gw-site.key"},
            "ledger": {"cluster": "ledger/cluster.json"},
            "limits": self.limits,
            "batch": self.batch,
            "http": {"host": http_host, "port": http_port,
                     **({"token_file": DASHBOARD_TOKEN_FILE} if self.dashboard_login else {})},
        }

    def _gateway_http(self, index: int) -> tuple[str, int]:
        """HTTP address of gateway ``index``: the first keeps its dashboard's port across restarts."""
        if index == 1 and self.dashboard_url:
            found = re.fullmatch(r"http://(.+):(\d+)/", self.dashboard_url)
            if found:
                return found.group(1), int(found.group(2))
        return "127.0.0.1", 0

    def _start_gateway(self, timeout: float) -> None:
        for index in range(1, len(self.gateways) + 1):
            self._launch_gateway(index, *self._gateway_http(index), timeout)

    def _launch_gateway(self, index: int, http_host: str, http_port: int, timeout: float) -> None:
        proc, url = launch_gateway(self._gateway_config(http_host, http_port, index), self.data_dir, timeout,
                                   gateway_name(index))
        self.gateways[index - 1] = proc
        if index == 1:
            self.dashboard_url = url
        self.progress("%s %s: site %r, subscribed to ll/%s/dev/+/up, .../session and .../reg"
                      % (part_name("gateway", index, len(self.gateways)), self.gateway_id.hex(), self.site, self.site))

    def start_directory(self, timeout: float = 30.0) -> None:
        """Start the site's directory (``ledgerlink.gateway.directory``: discovery and the pair topics of peer
        sessions, its own broker account) and wait until it subscribed; ``supervise`` restarts it from then on."""
        log_path = self.data_dir / DIRECTORY_LOG
        offset = self._spawn_directory()
        deadline = time.monotonic() + timeout
        while True:
            with open(log_path, "rb") as f:
                f.seek(offset)
                if DIRECTORY_READY in f.read():
                    break
            if self.directory is None or self.directory.poll() is not None:
                raise StackError("directory exited with %s (see %s)"
                                 % (self.directory.returncode if self.directory else "?", log_path))
            if time.monotonic() > deadline:
                stop_process(self.directory)
                raise StackError("directory did not subscribe (see %s)" % log_path)
            time.sleep(0.05)
        self.progress("directory: discovery and pair topics of peer sessions on ll/%s/dev/+/dir (pid %d, log %s)"
                      % (self.site, self.directory.pid, log_path))

    def _spawn_directory(self) -> int:
        """Start the directory process without waiting; the size of its log before it started."""
        log_path = self.data_dir / DIRECTORY_LOG
        offset = log_path.stat().st_size if log_path.exists() else 0
        host = "127.0.0.1" if self.broker_host in ("0.0.0.0", "::", "") else self.broker_host
        with private_log(log_path) as log:
            spawn([sys.executable, "-m", "ledgerlink.gateway.directory", "--data-dir", str(self.data_dir),
                   "--site", self.site, "--broker", "%s:%d" % (host, self.broker_port)], log,
                  functools.partial(setattr, self, "directory"))
        return offset

    def start_updates(self, timeout: float = 30.0) -> None:
        """Make the broker account ``ll-updates`` (role updates: the only one that may publish on the devices'
        ``fw`` topics) and the relay key, and start the site's update service (``admin_release serve
        --data-dir``: releases in ``data_dir/ledger/releases``, offers re-proved from the ledger, the devices'
        version statements relayed to it); wait until it subscribed; ``supervise`` restarts it from then on."""
        from ledgerlink.tools.admin_release import UPDATES_USER

        self.access.add(UPDATES_USER, "updates")
        self._updates_relay_key()
        log_path = self.data_dir / UPDATES_LOG
        offset = self._spawn_updates()
        deadline = time.monotonic() + timeout
        while True:
            with open(log_path, "rb") as f:
                f.seek(offset)
                if UPDATES_READY in f.read():
                    break
            if self.updates is None or self.updates.poll() is not None:
                raise StackError("update service exited with %s (see %s)"
                                 % (self.updates.returncode if self.updates else "?", log_path))
            if time.monotonic() > deadline:
                stop_process(self.updates)
                raise StackError("update service did not subscribe (see %s)" % log_path)
            time.sleep(0.05)
        self.progress("updates: offers and chunks on ll/%s/dev/+/fw as %s (pid %d, log %s)"
                      % (self.site, UPDATES_USER, self.updates.pid, log_path))

    def _updates_relay_key(self) -> Path:
        """``ledger/keys/updates-relay.key`` (mode 0600), the key that submits the devices' version statements:
        made and registered on the ledger (admin-signed, role sensor: the least a submitter needs, since each
        statement carries its device's own signature) at the first start. The key reaches its name only once the
        registration committed, so a site never keeps a relay key the ledger does not know."""
        from ledgerlink.protocol.codes import ROLE_SENSOR
        from ledgerlink.protocol.ledger_tx import registration_request

        path = self.data_dir / "ledger" / "keys" / UPDATES_RELAY_KEY
        if path.exists():
            return path
        priv = self.crypto.generate_private_key()
        pending = path.with_name(path.name + ".new")
        write_key(pending, priv)
        request = registration_request(priv, ROLE_SENSOR, {"name": "update-relay"}, now_ms())
        try:
            res = self._ledger().submit(enc.register_tx(self.chain_id, self._updates_admin_key(), request, now_ms()))
            if res.get("status") != "committed" or res.get("code") != REASON_OK:
                raise StackError("the update service's relay key was not registered: %r" % (res,))
        except BaseException:
            pending.unlink(missing_ok=True)
            raise
        os.rename(pending, path)
        self.progress("made: the update service's relay key %s (mode 0600), registered on the ledger" % path)
        return path

    def _updates_admin_key(self) -> bytes:
        """The admin key that registers the update service's relay key."""
        return self._cluster().key("admin")

    def _spawn_updates(self) -> int:
        """Start the update service without waiting; the size of its log before it started."""
        log_path = self.data_dir / UPDATES_LOG
        offset = log_path.stat().st_size if log_path.exists() else 0
        host = "127.0.0.1" if self.broker_host in ("0.0.0.0", "::", "") else self.broker_host
        with private_log(log_path) as log:
            spawn([sys.executable, "-m", "ledgerlink.tools.admin_release", "serve", "--data-dir", str(self.data_dir),
                   "--site", self.site, "--host", host, "--port", str(self.broker_port),
                   "--cluster", str(self._cluster().config_path),
                   "--relay-key", str(self.data_dir / "ledger" / "keys" / UPDATES_RELAY_KEY)], log,
                  functools.partial(setattr, self, "updates"))
        return offset

    def stop(self) -> None:
        """Stop update service, directory, gateways, ledger client, cluster and broker (each waited for)."""
        self.stopping = True
        stop_process(self.updates)
        stop_process(self.directory)
        for proc in self.gateways:
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.gateways:
            stop_process(proc, 15)
        for proc in self.standbys:
            _end_standby(proc)
        self.standbys.clear()
        if self.ledger is not None:
            self.ledger.close()
            self.ledger = None
        if self.cluster is not None:
            self.cluster.stop()
        stop_process(self.broker)

    # --- supervision ----------------------------------------------------------------------------------

    def _supervised(self) -> list["_Part"]:
        """The parts this stack started, each with its restart state (made on first use)."""
        wanted: list[tuple[str, Path, Callable[[], subprocess.Popen | None], Callable[[], None]]] = []
        if self.broker is not None or "broker" in self.parts:
            wanted.append(("broker", self.broker_log, lambda: self.broker, self._spawn_broker))
        if self.cluster is not None:
            for i in range(self.cluster.config.n):
                wanted.append(("ledger node %d" % i, self.data_dir / "ledger" / ("node%d.log" % i),
                               functools.partial(self.cluster.procs.get, i),
                               functools.partial(self.cluster.start_node, i)))
        for index in range(1, len(self.gateways) + 1):
            if self.gateways[index - 1] is None and part_name("gateway", index, len(self.gateways)) not in self.parts:
                continue                                    # not started (yet)
            wanted.append((part_name("gateway", index, len(self.gateways)),
                           self.data_dir / (gateway_name(index) + ".log"),
                           functools.partial(self.gateways.__getitem__, index - 1),
                           functools.partial(self._respawn_gateway, index)))
        if self.directory is not None or "directory" in self.parts:
            wanted.append(("directory", self.data_dir / DIRECTORY_LOG, lambda: self.directory, self._spawn_directory))
        if self.updates is not None or "updates" in self.parts:
            wanted.append(("updates", self.data_dir / UPDATES_LOG, lambda: self.updates, self._spawn_updates))
        out = []
        for key, log, current, start in wanted:
            part = self.parts.get(key)
            if part is None:
                part = self.parts[key] = _Part(key, log, current, start)
            out.append(part)
        return out

    def _respawn_gateway(self, index: int) -> None:
        """Start gateway ``index`` again, from a warm standby when there is one, without waiting for it to
        subscribe (``supervise`` reports that)."""
        cfg = self._gateway_config(*self._gateway_http(index), index)
        self.standbys = [p for p in self.standbys if p.poll() is None]
        offset = spawn_gateway(cfg, self.data_dir, gateway_name(index),
                               functools.partial(self.gateways.__setitem__, index - 1),
                               self.standbys.pop(0) if self.standbys else None)
        self.parts[part_name("gateway", index, len(self.gateways))].watch = offset

    def _keep_standbys(self) -> None:
        """Start one more warm standby when fewer than ``min(gateways, MAX_STANDBYS)`` wait, once every gateway
        runs and has subscribed (so a standby's imports do not slow a gateway's own start)."""
        if not self.warm_standby:
            return
        self.standbys = [p for p in self.standbys if p.poll() is None]
        if len(self.standbys) >= min(len(self.gateways), MAX_STANDBYS):
            return
        for index in range(1, len(self.gateways) + 1):
            part = self.parts.get(part_name("gateway", index, len(self.gateways)))
            if self.gateways[index - 1] is None or (part is not None and (part.due is not None or part.watch is not None)):
                return
        with private_log(self.data_dir / STANDBY_LOG) as log:
            spawn([sys.executable, "-m", "ledgerlink.gateway.main", "--standby", "--log-level", "INFO"], log,
                  self.standbys.append, stdin=subprocess.PIPE)

    def standby_pids(self) -> list[int]:
        """Process ids of the gateways' warm standbys."""
        return [p.pid for p in self.standbys if p.poll() is None]

    def supervise(self, now: float | None = None) -> list[str]:
        """Start again each part that exited by itself, once its restart delay has passed; the lines to report.

        Does nothing once ``stop`` was called. Writes ``status.json`` and ``status.prom`` when anything changed.
        """
        if self.stopping:
            return []
        now = time.monotonic() if now is None else now
        lines: list[str] = []
        for part in self._supervised():
            if part.key == "broker":
                part.name = self.broker_name
            lines.extend(part.check(now))
        self._keep_standbys()
        if lines or now - self.status_written >= STATUS_EVERY_S:
            self.status_written = now
            try:
                self.write_status()
            except OSError as exc:                      # a full disk must not stop the supervision
                lines.append("status files not written: %s" % exc)
        return lines

    def status(self) -> dict[str, Any]:
        """Each supervised part: pid, state (running, starting, restarting), restarts, last exit status."""
        return {"parts": [part.status() for part in self._supervised()]}

    def write_status(self) -> None:
        """``data_dir/status.json`` and ``data_dir/status.prom`` (written to a temporary name, then renamed)."""
        parts = self.status()["parts"]
        lines = ["# HELP ledgerlink_site_restarts_total Restarts of a part of the site after it exited by itself.",
                 "# TYPE ledgerlink_site_restarts_total counter"]
        lines += ['ledgerlink_site_restarts_total{part="%s"} %d' % (p["part"], p["restarts"]) for p in parts]
        lines += ["# HELP ledgerlink_site_part_up 1 while the part's process runs.",
                  "# TYPE ledgerlink_site_part_up gauge"]
        lines += ['ledgerlink_site_part_up{part="%s"} %d' % (p["part"], p["state"] != "restarting") for p in parts]
        for name, text in (("status.json", json.dumps({"time_ms": now_ms(), "parts": parts}, indent=1) + "\n"),
                           ("status.prom", "\n".join(lines) + "\n")):
            tmp = self.data_dir / (name + ".tmp")
            tmp.write_text(text)
            os.replace(tmp, self.data_dir / name)

    def __enter__(self) -> "Stack":
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # --- ledger operations --------------------------------------------------------------------------

    def height(self) -> int:
        """Height of the newest committed block (0 before the first)."""
        res = self._ledger().latest()
        return int(res.get("height") or 0)

    def register(self, requests: Sequence[bytes], accounts: bool = True) -> list[dict]:
        """Admin-signed ``tx-register`` of each device ``registration-request``; raises unless all commit with code 0.
        ``accounts``: also make each device's broker account (False: the devices never connect themselves)."""
        admin = self._cluster().key("admin")
        txs = [enc.register_tx(self.chain_id, admin, r, now_ms()) for r in requests]
        results = self._ledger().submit_many(txs)
        for res in results:
            if res.get("status") != "committed" or res.get("code") != REASON_OK:
                raise StackError("registration refused: %r" % (res,))
        if accounts:
            self.access.add_registered(list(requests))
        return results

    def login(self, username: str) -> dict[str, str]:
        """``{"username", "password"}`` of one of the site's broker accounts (``broker_access``)."""
        return self.access.login(username)

    @property
    def dashboard_token(self) -> str | None:
        """The dashboard's login token (``dashboard_login``; made on first use, mode 0600), else None."""
        if not self.dashboard_login:
            return None
        return dashboard_token(self.data_dir)

    def device_login(self, device_id: bytes) -> dict[str, str]:
        """The broker login of a device (its account made when it does not exist yet)."""
        return self.access.add_device(device_id)

    def consumer_login(self) -> dict[str, str]:
        """The broker login of the site's consumer (reads the verified readings)."""
        return self.access.login(consumer_username(self.site))

    def follow_bans(self) -> list[str]:
        """Keep the broker accounts in step with bans made by any admin and key rotations made by any device:
        for each block committed since the last call, the account of each device whose record it changed
        follows the record, proven against the validators (``SiteAccess.follow_record``: disabled while
        banned, a new password for a rotated key). Called by whoever runs the site (``ledgerlink up``'s
        loop, every ``SUPERVISE_S``); one line per change. A restarted site goes on from the height the
        accounts last followed (``SiteAccess.followed``), so nothing committed meanwhile is missed."""
        from ledgerlink.gateway.checks import _device_changed_by
        from ledgerlink.tools.broker_access import (FOLLOW_BLOCKS_PER_CALL, AccessError, proven_block_txs,
                                                    proven_device_record)

        if self.ledger is None:
            return []
        try:
            top = self.height()
            if self.followed is None:
                noted = self.access.followed(self.chain_id)
                self.followed = top if noted is None or noted > top else noted
            start = self.followed
            lines = []
            while self.followed < min(top, start + FOLLOW_BLOCKS_PER_CALL):
                txs = proven_block_txs(self.ledger, self.chain_id, self.validators, self.followed + 1, self.group_key)
                for dev in filter(None, map(_device_changed_by, txs)):
                    record = proven_device_record(self.ledger, self.chain_id, self.validators, dev, self.followed + 1,
                                                  self.group_key)
                    lines += ["%s (ledger height %d)" % (line, self.followed + 1)
                              for line in self.access.follow_record(dev, record)]
                self.followed += 1
            if self.followed != start:
                self.access.note_followed(self.chain_id, self.followed)
            return lines
        except LedgerUnavailable:
            return []                    # no node answers now (the supervisor reports and restarts them): next call
        except (OSError, StackError, AccessError, ValueError, KeyError, TypeError) as exc:
            return ["following bans: %s" % exc]

    def ban(self, device_id: bytes, reason: str) -> dict:
        """Admin-signed ``tx-ban`` of ``device_id``; raises unless it commits with code 0."""
        tx = enc.ban_tx(self.chain_id, self._cluster().key("admin"), device_id, reason, now_ms())
        res = self._ledger().submit(tx)
        if res.get("status") != "committed" or res.get("code") != REASON_OK:
            raise StackError("ban refused: %r" % (res,))
        self.access.set_disabled(device_username(device_id), True)
        return res


class _Part:
    """One supervised part of a ``Stack``: how to find and start its process, and its restart state."""

    def __init__(self, key: str, log: Path, current: Callable[[], subprocess.Popen | None],
                 start: Callable[[], None]) -> None:
        self.key = key
        self.name = key
        self.log = log
        self.current = current
        self.start = start
        self.restarts = 0
        self.crashes_in_row = 0
        self.started = time.monotonic()
        self.due: float | None = None          # when the next start is due, while the part is down
        self.last_exit: int | None = None
        self.watch: int | None = None          # a restarted gateway: its log offset, until it subscribed

    def check(self, now: float) -> list[str]:
        """Note an exit and schedule the restart, or start the part when its delay has passed."""
        if self.due is None:
            proc = self.current()
            if proc is None or proc.poll() is None:
                return self._subscribed()
            self.last_exit = proc.returncode
            self.watch = None
            return [self._schedule(now, "%s exited with status %s (see %s)" % (self.name, proc.returncode, self.log))]
        if now < self.due:
            return []
        self.due = None
        self.started = now
        self.restarts += 1
        try:
            self.start()
        except (OSError, StackError) as exc:
            return [self._schedule(now, "%s did not start: %s" % (self.name, exc))]
        proc = self.current()
        return ["%s restarted (pid %s, restart %d)" % (self.name, proc.pid if proc else "?", self.restarts)]

    def _schedule(self, now: float, what: str) -> str:
        self.crashes_in_row = 1 if now - self.started >= STABLE_S else self.crashes_in_row + 1
        delay = min(RESTART_MAX_S, RESTART_FIRST_S * 2 ** (self.crashes_in_row - 1))
        self.due = now + delay
        return "%s; starting it again in %.1f s" % (what, delay)

    def _subscribed(self) -> list[str]:
        if self.watch is None:
            return []
        try:
            with open(self.log, "rb") as f:
                f.seek(self.watch)
                if b"subscribed" not in f.read():
                    return []
        except OSError:
            return []
        self.watch = None
        return ["%s subscribed again" % self.name]

    def status(self) -> dict[str, Any]:
        proc = self.current()
        state = "restarting" if self.due is not None else "starting" if self.watch is not None else "running"
        return {"part": self.key, "name": self.name, "pid": proc.pid if proc is not None and proc.poll() is None else None,
                "state": state, "restarts": self.restarts, "last_exit": self.last_exit}


def part_name(kind: str, index: int, count: int) -> str:
    """"gateway" when there is one, else "gateway 1", "gateway 2", ..."""
    return kind if count == 1 else "%s %d" % (kind, index)


def gateway_name(index: int) -> str:
    """Base name of gateway ``index``'s config and log in the site's data directory."""
    return "gateway" if index == 1 else "gateway-%d" % index


def _end_standby(proc: subprocess.Popen) -> None:
    """Stop a warm standby: the end of its input tells it so; SIGTERM after a timeout."""
    try:
        if proc.stdin is not None:
            proc.stdin.close()
    except OSError:
        pass
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        stop_process(proc)


def spawn_gateway(cfg: dict, data_dir: Path, name: str, keep: Callable[[subprocess.Popen], None],
                  standby: subprocess.Popen | None = None) -> int:
    """Write ``data_dir/<name>.json`` and start the gateway with output to ``<name>.log``, handing the process
    to ``keep`` (as ``spawn`` does); the log's size before it started. ``standby``: a warm standby
    (``ledgerlink.gateway.main --standby``, its imports done), told to start as this gateway instead of a
    new process when it still runs."""
    path = data_dir / (name + ".json")
    path.write_text(json.dumps(cfg, indent=2) + "\n")
    log_path = data_dir / (name + ".log")
    start = log_path.stat().st_size if log_path.exists() else 0
    if standby is not None and standby.poll() is None and standby.stdin is not None:
        try:
            standby.stdin.write(b"go " + json.dumps([str(path), str(log_path)]).encode() + b"\n")
            standby.stdin.close()
            keep(standby)
            return start
        except OSError:                     # it ended meanwhile: a new process instead
            stop_process(standby)
    with private_log(log_path) as log:
        spawn([sys.executable, "-m", "ledgerlink.gateway.main", "--config", str(path), "--log-level", "INFO"],
              log, keep)
    return start


def launch_gateway(cfg: dict, data_dir: Path, timeout: float, name: str = "gateway") -> tuple[subprocess.Popen, str | None]:
    """Write ``<name>.json`` into ``data_dir``, start the gateway (log ``<name>.log``) and wait until it subscribed.

    Returns the process and the dashboard URL it logged (None without one); raises StackError, and on any
    error stops the process first.
    """
    log_path = data_dir / (name + ".log")
    started: list[subprocess.Popen] = []
    try:
        start = spawn_gateway(cfg, data_dir, name, started.append)
        proc = started[0]
        deadline = time.monotonic() + timeout
        while True:
            with open(log_path, "rb") as f:
                f.seek(start)
                text = f.read()
            if b"subscribed" in text:
                found = re.search(rb"dashboard on (http://\S+)", text)
                return proc, found.group(1).decode() if found else None
            if proc.poll() is not None:
                raise StackError("gateway exited with %s (see %s)" % (proc.returncode, log_path))
            if time.monotonic() > deadline:
                raise StackError("gateway did not subscribe (see %s)" % log_path)
            time.sleep(0.05)
    except BaseException:
        if started:
            stop_process(started[0])      # not left running when it failed to subscribe or a signal came
        raise
