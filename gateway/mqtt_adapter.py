"""MQTT 5 transport of the gateway: shared subscriptions, QoS 1, acks after durable append.

Two clients, chosen by ``client``: "ledgerlink" (``ledgerlink.gateway.mqtt_client``, one socket and
thread, the packets of a group's publishes and acks written together) or "paho" (paho-mqtt 2.x).

Subscribes to ``$share/ll-gw-{site}/ll/{site}/dev/+/up``, ``.../session`` and ``.../reg`` with QoS 1 on a persistent
session (clean_start false), announcing a Receive Maximum of ``receive_maximum`` frames in flight (without
it mosquitto sends 20 at a time, and each waits for the ack after the store commit). The client runs
with manual acks: a PUBACK is sent only once the frame is decided, i.e. after an accepted frame's
append to the SQLite store has been committed (WAL, synchronous=FULL) or after its refusal was handled.
A frame that waits for a registry answer is acknowledged when that answer (or the timeout refusal)
comes. If the gateway dies before the ack, the broker redelivers the frame (to this or another member
of the shared group); the redelivery of an already stored frame is answered with its stored-ack and
receipt (docs/protocol.md, "Delivery") and stored once.

Outgoing QoS 1 publishes wait for the broker's PUBACK at most the broker's Receive Maximum at a time
(mosquitto announces its ``max_inflight_messages``, 20 unless set; ``ledgerlink.tools.stack`` sets 1000):
with 20, a site's republishes and receipts are held to about 20 per broker round trip.

Accepted readings are republished as ``verified-reading`` on ``ll/{site}/verified/{dev}``, the readings
of a group under the signature of its stored-acks (``ledgerlink.gateway.republish``); replies
(refusals, receipts, session responses) go to ``ll/{site}/dev/{dev}/down``; the latest certified header
is published retained on ``ll/{site}/ledger/header``. All checks run on one thread (``GatewayCore`` is
not thread-safe) and take the queued inputs in groups of up to ``MAX_GROUP``: the group's accepted frames
are committed in one store transaction (one fsync) before any of them is acknowledged. The commits, and
then the publishes and acks, run in order on a commit thread while the next group is checked. A group's
signatures are first checked on the service's verify threads (``ledgerlink.gateway.verify_ahead``). The ledger calls
of the batcher run on their own thread; registry lookups on a pool of ``REGISTRY_FETCHERS`` threads, so
that many are in flight at once.

Several processes of one site share the group and one store file (see ``ledgerlink.gateway.main``):
sessions opened through one are known to all, and a sequence number is accepted once across them.

Shared group: a member's session expires ``SESSION_EXPIRY_S`` after its connection ends. While it is
away the broker deals it its share of the frames and holds them; a member started again within that
time (``ledgerlink up`` restarts a crashed gateway after 0.5 s, doubled per crash in a row) resumes the
session and gets them. A member stopped for good, or away longer, loses its session, and the broker
drops the frames it held (mosquitto does not deal them again); each of those frames has no stored-ack, so
its device sends it again after its ack timeout, and from then on the broker deals every frame to the
members that run. A stopped member thus delays a frame it was dealt until the device's first resend after
the expiry, and keeps nothing (tests/chaos/test_shared_group.py: one of two members stopped for good,
every reading stored within 40 s with a 3 s device ack timeout, and none dealt to it after the expiry). A longer expiry (it was 3600 s) made every
second frame of the site wait for the stopped member's ack timeout, for an hour.

Registration requests on ``reg`` are checked and held in the store until an admin registers the device
(``ledgerlink admin pending``). Receipt requests on ``ask`` are answered from the store; the receipts of a
batch anchored just before a crash are published after the restart (``Batcher.step``).
"""

from __future__ import annotations

import hashlib
import logging
import queue
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from ledgerlink.core.errors import InvalidProof
from ledgerlink.gateway.batcher import Batcher, Ledger, Outgoing
from ledgerlink.gateway.mqtt_client import MqttClient
from ledgerlink.protocol import validator_set
from ledgerlink.protocol.validator_set import TrustedSet
from ledgerlink.gateway.service import GatewayService, Handled, fetch_header, fetch_registry

log = logging.getLogger("ledgerlink.gateway.mqtt")

SESSION_EXPIRY_S = 10          # a member's session outlives its connection this long (see "Shared group" above)
RECONNECT_BACKOFF_S = (0.05, 1.0)   # first and longest wait between connect attempts: a restarted broker is used
                                    # within a second (one attempt a second is nothing to a site's broker)
TICK_S = 0.1
RECEIVE_MAXIMUM = 1000          # unacknowledged frames the broker may send (MQTT 5 Receive Maximum; mosquitto: 20)
OUT_INFLIGHT = 20               # own QoS 1 publishes awaiting a PUBACK: mosquitto's Receive Maximum (paho scans
                                # this many at every PUBACK, so more costs CPU)
REGISTRY_FETCHERS = 16          # registry lookups in flight at once (pipelined on the ledger connection)
FOLLOW_S = 0.25                 # how often the ledger's newest height is asked for (bans reach the checks)
FOLLOW_MAX_BLOCKS = 64          # blocks fetched per round; a longer gap drops the whole registry cache
BATCH_POLLS = 4                 # batcher steps per batch interval (a batch is cut soon after its oldest frame is due)
MAX_GROUP = 256                 # inputs checked together and committed in one store transaction
COMMITS_AHEAD = 2               # checked groups waiting for the commit thread (then the check thread waits)
CLIENTS = ("ledgerlink", "paho")
DEFAULT_CLIENT = "ledgerlink"


def now_ms() -> int:
    return int(time.time() * 1000)



def served_header(core: Any, answer: dict) -> Any:
    """The header of a ledger answer that the gateway checks: the threshold certificate's (one FROST
    verification) when the trusted set has a group key and the node sent one, else the 2f+1-vote one."""
    threshold = answer.get("threshold_header")
    if getattr(core, "group_key", None) is not None and threshold is not None:
        return threshold
    return answer["certified_header"]

class MqttGateway:
    def __init__(self, service: GatewayService, batcher: Batcher, ledger: Ledger, site: str, host: str,
                 port: int, client_id: str, shared: bool = True, batch_interval_ms: int = 100,
                 clock: Callable[[], int] = now_ms, receive_maximum: int = RECEIVE_MAXIMUM,
                 client: str = DEFAULT_CLIENT, login: dict[str, str] | None = None, tls: Any = None) -> None:
        """``login``: the broker account (``{"username", "password"}``); ``tls``: an ``ssl.SSLContext``."""
        if client not in CLIENTS:
            raise ValueError("mqtt client %r is not one of %s" % (client, ", ".join(CLIENTS)))
        self.service = service
        self.batcher = batcher
        self.ledger = ledger
        self.site = site
        self.host = host
        self.port = port
        self.clock = clock
        self.batch_interval = batch_interval_ms / 1000
        prefix = "$share/ll-gw-%s/" % site if shared else ""
        self.subscriptions = [prefix + "ll/%s/dev/+/%s" % (site, level) for level in ("up", "session", "reg", "ask")]
        self.events: queue.Queue = queue.Queue()
        self.fetches = ThreadPoolExecutor(REGISTRY_FETCHERS, thread_name_prefix="ll-gw-registry")
        self.stop_event = threading.Event()
        self.pending_acks: dict[bytes, list[tuple[Any, int]]] = {}   # frame hash -> (ack token, QoS)
        self.acks_lock = threading.Lock()                           # pending_acks: check and commit threads
        self.commits: queue.Queue = queue.Queue(COMMITS_AHEAD)      # checked groups for the commit thread
        self.connected = threading.Event()
        self.receive_maximum = receive_maximum
        self.client_kind = client
        self.client: Any
        if client == "ledgerlink":
            self.client = MqttClient(host, port, client_id, keepalive=30, clean_start=False,
                                     session_expiry=SESSION_EXPIRY_S, receive_maximum=receive_maximum,
                                     backoff=RECONNECT_BACKOFF_S,
                                     on_messages=self._on_ll_messages, on_connect=self._on_ll_connect,
                                     tls=tls, **(login or {}))
            self.client.subscriptions.update((t, 1) for t in self.subscriptions)
            self.connected = self.client.connected
            return
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5,
                                  manual_ack=True)
        self.client.max_inflight_messages_set(OUT_INFLIGHT)
        self.client.reconnect_delay_set(*RECONNECT_BACKOFF_S)
        if login:
            self.client.username_pw_set(login["username"], login["password"])
        if tls is not None:
            self.client.tls_set_context(tls)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.on_disconnect = self._on_disconnect

    # --- paho callbacks (network thread) ------------------------------------------------------------

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if reason.is_failure:
            log.error("MQTT connect refused: %s", reason)
            return
        client.subscribe([(t, SubscribeOptions(qos=1)) for t in self.subscriptions])
        self.connected.set()
        log.info("connected to %s:%d, subscribed to %s", self.host, self.port, self.subscriptions)

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        self.connected.clear()
        log.warning("MQTT disconnected: %s", reason)

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        payload = bytes(msg.payload)
        frame_hash = hashlib.sha256(payload).digest()
        if self.service.observer is not None:
            self.service.observer.arrived([frame_hash])
        self.events.put(("frame", msg.topic, payload, msg.mid, msg.qos, frame_hash))

    # --- ledgerlink client callbacks (network thread) --------------------------------------------------

    def _on_ll_connect(self, session_present: bool) -> None:
        log.info("connected to %s:%d (session %s), subscribed to %s", self.host, self.port,
                 "resumed" if session_present else "new", self.subscriptions)

    def _on_ll_messages(self, client: Any, userdata: Any, msgs: list[Any]) -> None:
        sha256 = hashlib.sha256
        frames = [("frame", m.topic, m.payload, (m.pid, m.generation), m.qos, sha256(m.payload).digest())
                  for m in msgs]
        if self.service.observer is not None:
            self.service.observer.arrived([f[5] for f in frames])
        self.events.put(("frames", frames))

    # --- effects ------------------------------------------------------------------------------------

    def publish(self, items: list[Outgoing]) -> None:
        """Publish ``items``: QoS 1, but stored-acks QoS 0 (a lost ack costs the device one resend, which is
        answered with the ack again; QoS 1 cost a PUBACK to handle per frame)."""
        if self.client_kind == "ledgerlink":
            client = self.client
            if items:
                client.publish_many_qos0([(o.topic, o.payload) for o in items if not o.qos], flush=False)
                client.publish_many([(o.topic, o.payload, o.retain) for o in items if o.qos])
            return
        for o in items:
            self.client.publish(o.topic, o.payload, qos=o.qos, retain=o.retain)

    def _carry_out(self, h: Handled) -> None:
        if self.client_kind == "ledgerlink":
            client = self.client
            if h.outgoing:
                client.publish_many([(o.topic, o.payload, o.retain) for o in h.outgoing if o.qos], flush=False)
                client.publish_many_qos0([(o.topic, o.payload) for o in h.outgoing if not o.qos], flush=False)
            client.ack_many([token for token, _ in self._acks(h.decided)])
        else:
            self.publish(h.outgoing)
            for mid, qos in self._acks(h.decided):
                self.client.ack(mid, qos)
        for dev in h.fetch:
            self.fetches.submit(self._fetch, dev)

    def _acks(self, decided: list[bytes]) -> list[tuple[Any, int]]:
        """(ack token, QoS) of the QoS 1+ deliveries of the ``decided`` frames, taken from ``pending_acks``."""
        pending = self.pending_acks
        with self.acks_lock:
            return [(token, qos) for frame_hash in decided for token, qos in pending.pop(frame_hash, ()) if qos > 0]

    # --- threads ------------------------------------------------------------------------------------

    def _checks_loop(self) -> None:
        next_tick = time.monotonic()
        backlog: list[tuple] = []       # inputs taken from the queue, not yet checked
        events = self.events
        while not self.stop_event.is_set():
            try:
                ev = events.get(timeout=TICK_S) if not backlog else events.get_nowait()
                while True:
                    if ev[0] == "frames":
                        backlog.extend(ev[1])
                    else:
                        backlog.append(ev)
                    if len(backlog) >= MAX_GROUP:
                        break
                    ev = events.get_nowait()
            except queue.Empty:
                pass
            if len(backlog) > MAX_GROUP:
                items, backlog = backlog[:MAX_GROUP], backlog[MAX_GROUP:]
            else:
                items, backlog = backlog, []
            try:
                pending = self.pending_acks
                with self.acks_lock:
                    for ev in items:
                        if ev[0] == "frame":
                            pending.setdefault(ev[5], []).append((ev[3], ev[4]))
                if time.monotonic() >= next_tick:
                    next_tick = time.monotonic() + TICK_S
                    items.append(("tick",))
                if items:
                    checked = self.service.check_many([(ev[0], ev[1], ev[2], ev[5]) if ev[0] == "frame" else ev
                                                       for ev in items], self.clock())
                    while not self.stop_event.is_set():
                        try:
                            self.commits.put(checked, timeout=TICK_S)
                            break
                        except queue.Full:
                            continue
            except Exception:  # noqa: BLE001 - a bug in the checks: stop rather than guess
                log.exception("gateway check loop failed; stopping")
                self.stop_event.set()

    def _commit_loop(self) -> None:
        """Commit the checked groups in order, then publish and acknowledge each. While a group's store
        transaction runs (SQLite and fsync without the GIL), the check thread checks the next one."""
        while True:
            checked = self.commits.get()
            if checked is None:
                return
            try:
                self._carry_out(self.service.commit(checked))
            except Exception:  # noqa: BLE001 - e.g. the store failed: stop rather than ack undurable frames
                log.exception("gateway commit failed; stopping")
                self.stop_event.set()
                return

    def _fetch(self, dev: bytes) -> None:
        proof = fetch_registry(self.ledger, dev)
        if proof is not None:
            self.events.put(("registry", dev, proof))

    def _follow_loop(self) -> None:
        """Feed every committed block to the checks in height order (``GatewayCore.on_block``). Heights
        come only from certified headers that verify, so a lying node cannot make it skip blocks; a block
        one node withholds or alters is asked of the others."""
        core = self.service.core
        followed: int | None = None
        warned = 0.0
        while not self.stop_event.wait(FOLLOW_S):
            try:
                latest = self.ledger.latest()
                if not latest.get("ok"):
                    continue
                try:
                    top = core.check_header(served_header(core, latest)).height
                except InvalidProof:
                    if not self._follow_validators():
                        raise
                    top = core.check_header(served_header(core, latest)).height
                if followed is None or top - followed > FOLLOW_MAX_BLOCKS:
                    if followed is not None:
                        log.warning("ledger blocks %d..%d not followed; registry cache dropped", followed + 1, top)
                    self.events.put(("gap", served_header(core, latest)))
                    followed = top
                    continue
                while followed < top and not self.stop_event.is_set():
                    block = self._checked_block(followed + 1)
                    if block is None:
                        raise ConnectionError("no node gave block %d in a form that checks" % (followed + 1))
                    self.events.put(("block", block[0], block[1]))
                    followed += 1
            except Exception as exc:  # noqa: BLE001 - ledger unreachable or lying: asked again next round
                if time.monotonic() - warned > 10:
                    warned = time.monotonic()
                    log.warning("following the ledger: %s", exc)

    def _follow_validators(self) -> bool:
        """Follow the validator set changes the ledger proves, each certified by the set before it
        (``validator_set.follow_changes``), so the checks and the batcher trust the set in force; True when
        the set changed. Asked when the newest header does not verify against the trusted set."""
        core = self.service.core
        trusted = getattr(self, "_trusted_set", None) or TrustedSet(core.chain_id, core.validator_keys,
                                                                    group_key=core.group_key)
        nodes = len(getattr(getattr(self.ledger, "config", None), "nodes", ())) or 1

        def ask(epoch: int) -> Any:
            for i in range(nodes):
                try:
                    res = self.ledger.request_to(i, "set_change", epoch=epoch)
                except Exception:  # noqa: BLE001 - this node is down: the next one is asked
                    continue
                if res.get("ok"):
                    return res["proof"]
            return None

        new = validator_set.follow_changes(trusted, ask, core.crypto)
        self._trusted_set = new
        if new is trusted:
            return False
        log.info("validator set epoch %d: %d validators from height %d", new.epoch, len(new.keys), new.from_height)
        core.group_key = self.batcher.group_key = new.group_key
        core.validator_keys = list(new.keys)
        self.batcher.validator_keys = list(new.keys)
        return True

    def _checked_block(self, height: int) -> tuple[Any, list] | None:
        """(certified header, txs) of block ``height`` that pass ``GatewayCore.check_block``, from the
        preferred node or else any other; None when none gives one."""
        asks: list[Callable[[], dict]] = [lambda: self.ledger.block(height)]
        nodes = getattr(getattr(self.ledger, "config", None), "nodes", ())
        asks += [lambda i=i: self.ledger.request_to(i, "block", height=height) for i in range(len(nodes))]
        for ask in asks:
            try:
                res = ask()
                certified = served_header(self.service.core, res) if res.get("ok") else None
                if certified is not None and self.service.core.check_block(certified, res["txs"]).height == height:
                    return certified, res["txs"]
            except Exception:  # noqa: BLE001 - this node failed or lied: the next one is asked
                continue
        return None

    def _batch_loop(self) -> None:
        last_header = None
        while not self.stop_event.wait(self.batch_interval / BATCH_POLLS):
            try:
                self.publish(self.batcher.step(self.clock()))
            except Exception:  # noqa: BLE001 - retried at the next step
                log.exception("batcher step failed")
            if self.batcher.last_header is not None and self.batcher.last_header != last_header:
                last_header = self.batcher.last_header
                self.events.put(("header", last_header[1]))

    def run(self) -> None:
        """Connect and serve until ``stop()``. The broker connection is made first, and the newest header is
        asked of the ledger on a thread of its own, so neither waits for the other nor for the store's restore
        (frames that come meanwhile wait in the queue for the checks, which start after the restore)."""
        self._connect()
        try:
            self.service.restore(self.clock())
        except BaseException:
            self._disconnect()
            raise
        threading.Thread(target=self._first_header, name="ll-gw-header", daemon=True).start()
        threads = [threading.Thread(target=self._batch_loop, name="ll-gw-batcher", daemon=True),
                   threading.Thread(target=self._follow_loop, name="ll-gw-follow", daemon=True)]
        committer = threading.Thread(target=self._commit_loop, name="ll-gw-commit", daemon=True)
        for t in threads + [committer]:
            t.start()
        self._serve(threads, committer)

    def _first_header(self) -> None:
        header = fetch_header(self.ledger)
        if header is not None:
            self.events.put(("header", header))

    def _connect(self) -> None:
        if self.client_kind == "ledgerlink":
            self.client.start()
        else:
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = SESSION_EXPIRY_S
            props.ReceiveMaximum = self.receive_maximum
            self.client.connect(self.host, self.port, keepalive=30, clean_start=False, properties=props)
            self.client.loop_start()

    def _serve(self, threads: list[threading.Thread], committer: threading.Thread) -> None:
        try:
            self._checks_loop()
        finally:
            self.stop_event.set()
            if committer.is_alive():
                try:
                    self.commits.put(None, timeout=30)    # after the groups already checked are committed
                except queue.Full:
                    log.error("the commit thread is stuck; checked frames stay unacknowledged")
                committer.join(timeout=30)
            for t in threads:
                t.join(timeout=15)
            self.fetches.shutdown(wait=False, cancel_futures=True)
            if self.service.verifier is not None:
                self.service.verifier.close()
            self._disconnect()

    def _disconnect(self) -> None:
        if self.client_kind == "ledgerlink":
            self.client.stop()
        else:
            self.client.disconnect()
            self.client.loop_stop()

    def stop(self) -> None:
        self.stop_event.set()
