"""What a board client does once: its start (``DeviceClient.__init__``: configuration, storage, protocol,
the stored session) and taking a rotated identity key (``DeviceClient.key_rotated``). ``device`` loads this
module for each and forgets it after, so the heap holds none of this code while the device runs.
"""

from ledgerlink.core.errors import LedgerlinkError
from ledgerlink.protocol import device_protocol as dp

from ledgerlink_client.device import (COMMAND_FILE, KEY_ROTATION_MODULES, SESSION_FILE, _default_rng, _sleep_ms,
                                      _ticks_diff, _ticks_ms, _time_ms, _unload, _unload_session_code)
from ledgerlink_client.queue import MemoryStorage, OfflineQueue, SeqCounter, StoredRecord

DEFAULTS = {
    "mode": "session",
    "keepalive_s": 60,
    "backoff_min_ms": 500,
    "backoff_max_ms": 60000,
    "retry_ms": 5000,
    "max_inflight": 4,
    "queue_bytes": 32768,
    "queue_frames": 256,
    "max_replies": 16,
    "hold_bytes": 8192,
    "hold_frames": 64,
    "session_margin_s": 600,
    "session_timeout_ms": 20000,
    "max_tracked": 64,
    "max_results": 4,
    "ack_timeout_ms": 10000,
    "pace_per_s": 8,
    "pace_burst": 16,
    "await_bytes": 16384,
    "await_frames": 128,
    "receipt_wait_ms": 30000,
    "receipts_kept": 32,
    "gc_threshold": None,
    "header_cache": 1,
}

# The default ``gc_threshold`` is this fraction of the heap (4 KB of a 64 KB heap, 7 KB of 110 KB).
GC_THRESHOLD_SHARE = 16


def _collect_every(n):
    """On MicroPython, collect after every ``n`` bytes allocated (None: 1/``GC_THRESHOLD_SHARE`` of the
    heap; 0: the port's default, when the heap is full). A collection only when the heap is full leaves
    long-lived objects between dead ones, and a small heap then has no free 1-2 KB block for an MQTT
    packet; collecting more often costs time (each collection scans the live heap). board32, whole
    client cycle from ROMFS in session mode: least heap 64 KB with 1/16 of the heap, 65-66 KB with 8 KB,
    102 KB without; an ECDSA check on a 64 KB heap takes about 1.4 times as long with 4 KB as with
    8 KB (tests/boards/test_board_cycle.py)."""
    import gc

    if not hasattr(gc, "threshold"):
        return
    if n is None:
        n = (gc.mem_free() + gc.mem_alloc()) // GC_THRESHOLD_SHARE
    if n:
        gc.threshold(n)


def start(client, config, mqtt_factory, storage, rng, ticks_ms, ticks_diff, time_ms, sleep_ms, on_reply, backend,
          on_result):
    """``DeviceClient.__init__``."""
    cfg = dict(DEFAULTS)
    cfg.update(config)
    client.config = cfg
    _collect_every(cfg["gc_threshold"])
    client.mode = cfg["mode"]
    if client.mode != "session" and client.mode != "signed":
        raise ValueError("mode must be 'session' or 'signed'")
    identity = cfg.get("identity_key")
    if "session" in cfg:
        raise ValueError("pre-made session keys are not supported: the device opens its sessions (ca_public)")
    if identity is None:
        raise ValueError("an identity_key is needed")
    if client.mode == "session" and cfg.get("ca_public") is None:
        raise ValueError("session mode needs the fog CA key (ca_public)")
    storage = storage if storage is not None else MemoryStorage()
    client.storage = storage
    client.seq = SeqCounter(storage, "llseq")
    client.rng = rng or _default_rng
    client.ticks_ms = ticks_ms or _ticks_ms
    client.ticks_diff = ticks_diff or _ticks_diff
    client.time_ms = time_ms or _time_ms
    client.sleep_ms = sleep_ms or _sleep_ms
    registered = cfg.get("device_id")
    rotated = registered is not None and cfg.get("key_rotated")
    client.protocol = dp.DeviceProtocol(
        identity, cfg["site"], client.seq, cfg.get("chain_id"), cfg.get("validators"), cfg.get("ca_public"),
        cfg.get("gateway_keys"), backend, client.rng, cfg["max_tracked"], None if rotated else registered,
        cfg["header_cache"], cfg.get("group_key"))
    if rotated:                             # the id registered under an earlier key (``key_rotated``)
        client.protocol.device_id = bytes(registered)
    client.device_id = client.protocol.device_id
    if registered is not None and bytes(registered) != client.device_id:
        raise ValueError("device_id does not belong to the identity key")
    client.check_receipts = cfg.get("chain_id") is not None and cfg.get("validators") is not None
    client.topic_up = client.protocol.up_topic
    client.topic_down = client.protocol.down_topic
    client.client_id = cfg.get("client_id") or "ll-" + client.device_id.hex()
    client.mqtt_factory = mqtt_factory
    client.login = cfg.get("login")
    client.queue = OfflineQueue(storage, "llq", cfg["queue_bytes"], cfg["queue_frames"])
    client.held = OfflineQueue(storage, "llh", cfg["hold_bytes"], cfg["hold_frames"])
    client.on_reply = on_reply
    client.on_result = on_result
    client.replies = []
    client.receipts = []
    client.mqtt = None
    client.failures = 0
    client._retry_from = None
    client._retry_wait = 0
    client._delivery = None
    client._last_tx = 0
    client._ping_sent = None
    client._session_at = None
    client._plain = {}            # seq -> (session id, cbor [time, measurements]) awaiting a receipt
    client._plain_order = []
    client.stats = {"connects": 0, "connect_failures": 0, "drops": 0, "published": 0, "retransmitted": 0,
                  "acked": 0, "pings": 0, "bad_replies": 0, "session_requests": 0, "sessions_opened": 0,
                  "sessions_restored": 0, "sessions_refused": 0, "receipts_valid": 0, "receipts_invalid": 0,
                  "refused": 0, "ignored_replies": 0, "resealed": 0, "registrations_held": 0,
                  "registrations_refused": 0, "stored": 0, "acks_invalid": 0, "refused_for_good": 0,
                  "resent": 0, "asks": 0}
    client._registration = None
    client.ecqv = client.mode == "session"
    client.protocol.open_commands(StoredRecord(storage, COMMAND_FILE), client.time_ms())
    if client.ecqv:
        _restore_session(client)


def _restore_session(client):
    raw = client.storage.read(SESSION_FILE)
    if not raw:
        return
    try:
        client.protocol.restore_session(raw, client.time_ms())
    except LedgerlinkError:                 # damaged, expired, or the counter was lost or is behind
        client.storage.remove(SESSION_FILE)
        return
    finally:
        _unload_session_code()
    client.stats["sessions_restored"] += 1


def key_rotated(client, identity_key):
    """``DeviceClient.key_rotated``."""
    login = client.login
    if not login or not login.get("login_key"):
        raise ValueError("no broker login with the site's login_key: the new password cannot be computed")
    from ledgerlink.protocol import broker_login

    protocol = client.protocol
    priv = bytes(identity_key)
    public_key = protocol.crypto.public_key(priv, True)
    user = broker_login.username(client.device_id)
    login_key = login["login_key"]
    login["password"] = broker_login.password(priv, bytes.fromhex(login_key) if isinstance(login_key, str)
                                              else login_key, user, protocol.crypto)
    login["username"] = user
    protocol._priv = priv
    protocol.public_key = public_key
    _unload(KEY_ROTATION_MODULES)
    _unload(("broker_login",), "ledgerlink.protocol")
    client._drop(client.ticks_ms())             # the old password's connection (the broker ends it too)
    client._retry_wait = 0
    client.failures = 0
    return login
