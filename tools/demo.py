"""`ledgerlink demo`: the whole system on one machine, and `ledgerlink demo --library`: the protocol
library in-process.

``run_live`` starts a ``Stack`` (an MQTT broker, a 4-node PBFT ledger, a gateway), registers N simulated
devices (``ledgerlink.device.Device``: their own keys; admin-signed tx-register), opens ECQV sessions
for half of them (the others sign with their identity key), publishes readings, checks every receipt
as a device does (batch inclusion, anchor tx inclusion, certified header: the ledger's validators run the
FROST DKG at genesis, so the header carries one threshold signature of 2f+1 of them and each device holds
the group key beside the validator keys), bans one device
halfway through (admin-signed tx-ban) and checks that the gateway refuses it from then on. It prints a
live summary, stops every process on Ctrl-C or after ``--duration``, and returns 0 only when every
check held (1 when one failed, 2 when the broker asked for cannot be used, 130 when interrupted before
every step ran). The broker (``broker``: auto, mosquitto or embedded; None: $LEDGERLINK_BROKER, else auto)
is mosquitto when installed, else the embedded Python broker ``ledgerlink.tools.mqtt_broker``.

``run_demo`` (``--library``): one device, one fog CA and one gateway exercising ``ledgerlink.core``
in-process; each step prints what happened and a wrong result makes it return 1.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

from ledgerlink.core import cbor, cose, ecqv, merkle, session_keys, smt
from ledgerlink.core.backend import get_backend
from ledgerlink.core.errors import InvalidSignature, InvalidTag, LedgerlinkError
from ledgerlink.protocol.codes import REASON_BANNED_DEVICE as BANNED_DEVICE
from ledgerlink.protocol.ledger_tx import reason_name

SITE_TOPIC = "ll/demo-site/dev/%s/up"


class DemoFailure(Exception):
    """A step of the demo did not give the expected result."""


def _step(title: str, action: Callable[[], str]) -> None:
    started = time.perf_counter()
    detail = action()
    elapsed_ms = (time.perf_counter() - started) * 1000
    print(f"  [ok] {title:<46} {elapsed_ms:8.2f} ms  {detail}")


def _expect_refused(action: Callable[[], object], errors: tuple[type[Exception], ...]) -> str:
    try:
        action()
    except errors as exc:
        return f"refused: {type(exc).__name__}: {exc}"
    raise DemoFailure("a forged input was accepted")


def run_demo(backend: str | None = None, readings: int = 8) -> int:
    crypto = get_backend(backend)
    print(f"ledgerlink demo (crypto backend: {crypto.name})")
    state: dict = {}

    def make_device_key() -> str:
        priv = crypto.generate_private_key()
        pub = crypto.public_key(priv, True)
        state["device_priv"] = priv
        state["device_pub"] = pub
        state["device_id"] = hashlib.sha256(pub).digest()[:16]
        return "device id " + state["device_id"].hex()

    def sign_reading() -> str:
        reading = {1: state["device_id"], 2: 1, 3: int(time.time() * 1000), 4: {"t": 21.5, "rh": 40.0}}
        topic = (SITE_TOPIC % state["device_id"].hex()).encode()
        frame = cose.sign1(cbor.dumps(reading), state["device_priv"], state["device_id"],
                           external_aad=topic, backend=crypto.name)
        state["signed_frame"] = frame
        state["topic"] = topic
        return f"COSE_Sign1 frame of {len(frame)} bytes"

    def verify_reading() -> str:
        payload = cose.verify_sign1(state["signed_frame"], state["device_pub"],
                                    external_aad=state["topic"], backend=crypto.name)
        return "reading " + repr(cbor.loads(payload)[4])

    def tampered_reading() -> str:
        frame = bytearray(state["signed_frame"])
        frame[-70] ^= 0x01
        return _expect_refused(
            lambda: cose.verify_sign1(bytes(frame), state["device_pub"], external_aad=state["topic"],
                                      backend=crypto.name),
            (InvalidSignature, LedgerlinkError))

    def issue_certificate() -> str:
        ca_priv = crypto.generate_private_key()
        state["ca_pub"] = crypto.public_key(ca_priv)
        k_u, r_u = ecqv.create_request()
        now_s = int(time.time())
        cert, r = ecqv.issue(r_u, ca_priv, serial=hashlib.sha256(r_u).digest()[:8], issuer=b"fog-ca",
                             subject=state["device_id"], valid_from=now_s, valid_until=now_s + 86400)
        state["cert"] = cert
        state["k_u"], state["r"] = k_u, r
        return f"implicit certificate of {len(cert)} bytes (a signed X.509 is ~500)"

    def reconstruct_key() -> str:
        d_u, q_u = ecqv.reconstruct(state["k_u"], state["cert"], state["r"], state["ca_pub"])
        if ecqv.public_key(state["cert"], state["ca_pub"]) != q_u:
            raise DemoFailure("gateway and device disagree on the certified key")
        state["session_priv"], state["session_pub"] = d_u, q_u
        return "d_U*G == e*P_U + Q_CA checked"

    def derive_session() -> str:
        gw_priv = crypto.generate_private_key()
        gw_pub = crypto.public_key(gw_priv)
        device_side = session_keys.derive(state["session_priv"], gw_pub, state["cert"], state["device_id"],
                                          b"gw-1", backend=crypto.name)
        gateway_side = session_keys.derive(gw_priv, state["session_pub"], state["cert"], state["device_id"],
                                           b"gw-1", backend=crypto.name)
        if (device_side.key, device_side.base_iv) != (gateway_side.key, gateway_side.base_iv):
            raise DemoFailure("session keys differ")
        state["session"] = device_side
        return "session id " + device_side.session_id.hex()

    def encrypted_readings() -> str:
        keys = state["session"]
        frames = []
        for seq in range(1, readings + 1):
            reading = {1: state["device_id"], 2: seq, 3: int(time.time() * 1000), 4: {"t": 20 + seq / 10}}
            frames.append(cose.encrypt0(cbor.dumps(reading), keys.key, partial_iv=seq.to_bytes(4, "big"),
                                        base_iv=keys.base_iv, kid=keys.session_id,
                                        external_aad=state["topic"], backend=crypto.name))
        for frame in frames:
            cbor.loads(cose.decrypt0(frame, keys.key, base_iv=keys.base_iv, external_aad=state["topic"],
                                     backend=crypto.name))
        state["encrypted_frames"] = frames
        return f"{len(frames)} COSE_Encrypt0 frames of {len(frames[0])} bytes sealed and opened"

    def tampered_ciphertext() -> str:
        keys = state["session"]
        frame = bytearray(state["encrypted_frames"][0])
        frame[-3] ^= 0x80
        return _expect_refused(
            lambda: cose.decrypt0(bytes(frame), keys.key, base_iv=keys.base_iv, external_aad=state["topic"],
                                  backend=crypto.name),
            (InvalidTag, LedgerlinkError))

    def batch_proof() -> str:
        entries = [state["signed_frame"]] + state["encrypted_frames"]
        tree = merkle.MerkleTree(entries)
        root = tree.root()
        index = len(entries) - 1
        proof = tree.inclusion_proof(index)
        merkle.verify_inclusion(merkle.leaf_hash(entries[index]), index, len(entries), proof, root)
        wrong = _expect_refused(
            lambda: merkle.verify_inclusion(merkle.leaf_hash(entries[0]), index, len(entries), proof, root),
            (LedgerlinkError,))
        return f"batch of {len(entries)}, root {root.hex()[:16]}..., proof of {len(proof)} hashes; wrong leaf {wrong}"

    def registry_proof() -> str:
        tree = smt.SparseMerkleTree()
        for n in range(200):
            tree.set(hashlib.sha256(b"device-%d" % n).digest(), b"record-%d" % n)
        key = hashlib.sha256(b"device-7").digest()
        tree.set(key, cbor.dumps({"status": "active", "key": state["device_pub"]}))
        root = tree.root()
        smt.verify(root, key, tree.get(key), tree.prove(key))
        absent = hashlib.sha256(b"never-registered").digest()
        smt.verify(root, absent, None, tree.prove(absent))
        return "membership and non-membership proofs verified against the state root"

    steps = [
        ("make a device key pair on the device", make_device_key),
        ("sign a reading (COSE_Sign1, ES256)", sign_reading),
        ("gateway verifies the signed reading", verify_reading),
        ("altered reading is refused", tampered_reading),
        ("fog CA issues an ECQV implicit certificate", issue_certificate),
        ("device reconstructs its session key", reconstruct_key),
        ("device and gateway derive one session key", derive_session),
        ("session-encrypted readings (COSE_Encrypt0)", encrypted_readings),
        ("altered ciphertext is refused", tampered_ciphertext),
        ("batch Merkle tree and inclusion proof", batch_proof),
        ("registry record proof (sparse Merkle)", registry_proof),
    ]
    try:
        for title, action in steps:
            _step(title, action)
    except (DemoFailure, LedgerlinkError) as exc:
        print(f"  [FAILED] {exc}")
        return 1
    print("all steps passed")
    return 0


# --- the live system ---------------------------------------------------------------------------------

BAN_REASON = "demo: tampering suspected"
EXIT_OK, EXIT_FAILED, EXIT_NO_BROKER, EXIT_INTERRUPTED = 0, 1, 2, 130
SUMMARY_EVERY_S = 5.0
DRAIN_S = 15.0
GATEWAY_LIMITS = {"registry_ttl_ms": 1000, "rate_per_s": 10, "burst": 20}


class _Interrupted(Exception):
    """SIGINT or SIGTERM arrived while the stack was starting."""


class _Signals:
    """SIGINT/SIGTERM handler: sets ``event``; raises ``_Interrupted`` while ``raising`` (start-up)."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.raising = True
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handle)

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def check(self) -> None:
        """Raise ``_Interrupted`` if a signal came while ``raising``: the handler's own raise is lost when
        the signal lands where Python ignores exceptions (a finalizer; while a child process starts, the
        signal is held back and raised after, see ``stack.spawn``)."""
        if self.raising and self.received is not None:
            raise _Interrupted()

    def _handle(self, signum: int, frame: Any) -> None:
        if self.received is not None:
            return
        self.received = signum
        self.event.set()
        print("%s: stopping" % signal.Signals(signum).name, flush=True)
        if self.raising:
            raise _Interrupted()


class _Tally:
    """What devices and the verified-topic subscriber saw (updated from MQTT threads)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.accepted: dict[bytes, list[int]] = {}      # device id -> device times of verified readings
        self.refused: dict[bytes, list[tuple[int, str]]] = {}
        self.receipts_valid = 0
        self.receipts_of: dict[bytes, int] = {}        # device id -> valid receipts
        self.receipts_invalid: list[str] = []
        self.header_height: int | None = None

    def verified(self, payload: bytes) -> None:
        try:
            v = cbor.loads(payload)
            dev, t = v[1], v[3]
        except (LedgerlinkError, TypeError, KeyError):
            return
        with self.lock:
            self.accepted.setdefault(dev, []).append(t)

    def header(self, payload: bytes) -> None:
        try:
            self.header_height = cbor.loads(payload)[0][1]
        except (LedgerlinkError, TypeError, IndexError, KeyError):
            pass

    def receipt(self, dev: bytes, result: Any) -> None:
        with self.lock:
            if result.valid:
                self.receipts_valid += 1
                self.receipts_of[dev] = self.receipts_of.get(dev, 0) + 1
            else:
                self.receipts_invalid.append(result.reason)

    def refusal(self, dev: bytes, event: Any) -> None:
        with self.lock:
            self.refused.setdefault(dev, []).append((event.code, event.reason))

    def totals(self) -> tuple[int, dict[str, int], int]:
        with self.lock:
            accepted = sum(len(v) for v in self.accepted.values())
            by_reason: dict[str, int] = {}
            for items in self.refused.values():
                for code, _ in items:
                    name = reason_name(code)
                    by_reason[name] = by_reason.get(name, 0) + 1
            return accepted, by_reason, self.receipts_valid


def _refused_text(by_reason: dict[str, int]) -> str:
    total = sum(by_reason.values())
    if not total:
        return "refused 0"
    return "refused %d (%s)" % (total, ", ".join("%s %d" % kv for kv in sorted(by_reason.items())))


class _Monitor:
    """An application subscribed to the verified readings and the certified header of the site."""

    def __init__(self, site: str, port: int, tally: _Tally, login: dict[str, str]) -> None:
        import paho.mqtt.client as mqtt

        self.topics = ("ll/%s/verified/+" % site, "ll/%s/ledger/header" % site)
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=login["username"], protocol=mqtt.MQTTv5)
        self.client.username_pw_set(login["username"], login["password"])
        self.subscribed = threading.Event()
        self.client.on_connect = lambda c, u, f, r, p: c.subscribe([(t, 1) for t in self.topics])
        self.client.on_subscribe = lambda c, u, mid, codes, p: self.subscribed.set()
        self.client.on_message = lambda c, u, m: (tally.header if m.topic == self.topics[1] else tally.verified)(
            bytes(m.payload))
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _open_devices(stack: Any, count: int, directory: Path, tally: _Tally) -> list[Any]:
    from ledgerlink.device.client import Device
    from ledgerlink.device.core import MODE_SESSION, MODE_SIGNED

    gateway_keys = {stack.gateway_id: stack.public_key("gateway")}
    devices = []
    for i in range(count):
        mode = MODE_SESSION if i % 2 == 0 else MODE_SIGNED
        holder: list[Any] = []
        dev = Device.open(str(directory / ("dev%02d" % i)), stack.site, "127.0.0.1", stack.broker_port,
                          stack.chain_id, stack.validators, ca_public=stack.public_key("gw-ca"),
                          gateway_keys=gateway_keys, group_key=stack.group_key, mode=mode, backoff_initial=0.2,
                          backoff_max=2.0,
                          on_receipt=lambda ev, h=holder: tally.receipt(h[0].core.device_id, ev),
                          on_refusal=lambda ev, h=holder: tally.refusal(h[0].core.device_id, ev))
        holder.append(dev)
        dev.name = "dev%02d" % i
        devices.append(dev)
    return devices


CUT_OFF_MS = 1000          # the banned device's broker account is disabled and its connection ended within this


def _all_decided(devices: list[Any]) -> bool:
    """Every frame was acknowledged by the broker and got a receipt or a refusal."""
    return all(len(d.queue) == 0 and len(d.core.sent) == 0 for d in devices)


def run_live(devices: int = 20, duration: float = 30.0, site: str = "demo", data: str | None = None,
             interval: float = 1.0, broker: str | None = None) -> int:
    """The whole system on loopback; see the module docstring. ``duration`` 0: until Ctrl-C."""
    from ledgerlink.device.core import ROLE_SENSOR
    from ledgerlink.tools.stack import Stack, StackError, choose_broker

    try:
        choose_broker(broker)
    except StackError as exc:                   # BrokerMissing or an unknown choice
        print(exc, file=sys.stderr)
        return EXIT_NO_BROKER
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("ledgerlink.device").setLevel(logging.ERROR)   # refusals are counted, not logged
    signals = _Signals()
    temporary = data is None
    data_dir = Path(tempfile.mkdtemp(prefix="ledgerlink-demo-") if data is None else data).resolve()
    t0 = time.monotonic()

    def say(line: str) -> None:
        print("[%6.1fs] %s" % (time.monotonic() - t0, line), flush=True)

    stack = Stack(data_dir, site, limits=GATEWAY_LIMITS, progress=say, broker=broker, threshold=True)
    tally = _Tally()
    devs: list[Any] = []
    monitor: _Monitor | None = None
    checks: list[tuple[bool, str]] = []
    steps_done = False
    failed = False
    ban_target = None
    ban_ms: int | None = None
    cut_off_ms: int | None = None
    signals.install()
    try:
        say("ledgerlink demo: site %r, %d devices, %s, data in %s" % (
            site, devices, "until Ctrl-C" if duration <= 0 else "%g s" % duration, data_dir))
        stack.start()
        signals.check()

        dev_dir = data_dir / "devices"
        shutil.rmtree(dev_dir, ignore_errors=True)
        devs = _open_devices(stack, devices, dev_dir, tally)
        requests = [d.core.registration_request(int(time.time() * 1000), ROLE_SENSOR,
                                                {"name": d.name, "model": "simulated"}).payload for d in devs]
        signals.check()
        results = stack.register(requests)
        for d in devs:
            d.set_login(stack.device_login(d.core.device_id)["password"])
        heights = sorted({r["height"] for r in results})
        say("registered %d devices: admin-signed tx-register, committed at height%s %s" % (
            len(devs), "s" if len(heights) > 1 else "", ", ".join(map(str, heights))))
        checks.append((True, "%d/%d devices registered on the ledger" % (len(devs), devices)))

        monitor = _Monitor(site, stack.broker_port, tally, stack.consumer_login())
        if not monitor.subscribed.wait(10):
            raise StackError("the verified-topic subscriber did not subscribe")
        signals.check()
        for d in devs:
            d.start()
        for d in devs:
            if not d.wait_connected(10):
                raise StackError("%s did not connect to the broker" % d.name)
        sessions = [d for d in devs if d.mode == "session"]
        opened = 0
        for d in sessions:
            try:
                d.open_session(10)
                opened += 1
            except Exception as exc:  # noqa: BLE001 - reported as a failed check
                say("%s: session not opened: %s" % (d.name, exc))
        say("sessions: %d/%d devices hold an ECQV session certificate from the gateway's fog CA; "
            "%d sign with their identity key" % (opened, len(sessions), len(devs) - len(sessions)))
        checks.append((opened == len(sessions), "%d/%d ECQV sessions opened" % (opened, len(sessions))))
        if stack.dashboard_url:
            say("dashboard: %s (metrics at %smetrics)" % (stack.dashboard_url, stack.dashboard_url))
        user = stack.consumer_login()["username"]
        creds = stack.access.credentials_path(user)
        if stack.broker_kind == "mosquitto":
            say("verified readings: %smosquitto_sub -h 127.0.0.1 -p %d -V mqttv5 -i %s -u %s -P PASSWORD -t "
                "'ll/%s/verified/+' (the consumer account; its password is in %s)"
                % ("" if shutil.which("mosquitto_sub") else "apt-get install mosquitto-clients, then ",
                   stack.broker_port, user, user, site, creds))
        else:
            say("verified readings: subscribe with an MQTT client to 'll/%s/verified/+' on 127.0.0.1:%d as client id "
                "and user %s (the consumer account; its password is in %s)" % (site, stack.broker_port, user, creds))
        say("ledger: chain %r, node client ports %s, logs and keys in %s" % (
            stack.chain_id, ", ".join(str(a.client_port) for a in stack.cluster.config.nodes), data_dir))
        if stack.group_key is not None:
            say("threshold headers: group key %s; devices check each receipt's header with one FROST signature "
                "of 2f+1 validators" % stack.group_key.hex())

        signals.check()
        signals.raising = False
        ban_target = devs[-1]
        ban_after = duration / 2 if duration > 0 else 10.0
        start = time.monotonic()
        next_summary = start + SUMMARY_EVERY_S
        next_tick = start
        seq = 0
        while not signals.event.is_set():
            now = time.monotonic()
            if duration > 0 and now - start >= duration:
                break
            if now >= next_tick:
                seq += 1
                for i, d in enumerate(devs):
                    d.publish_reading({"t": round(20 + i / 10 + (seq % 10) / 100, 2), "rh": 40 + (seq + i) % 20})
                next_tick += interval
            if ban_ms is None and now - start >= ban_after:
                res = stack.ban(ban_target.core.device_id, BAN_REASON)
                ban_ms = int(time.time() * 1000)
                say("banned %s (%s): admin-signed tx-ban %r committed at height %d" % (
                    ban_target.name, ban_target.core.device_id.hex(), BAN_REASON, res["height"]))
                while ban_target.connected and time.time() * 1000 - ban_ms < CUT_OFF_MS:
                    time.sleep(0.005)
                cut_off_ms = None if ban_target.connected else int(time.time() * 1000) - ban_ms
                say("broker account of %s disabled: %s" % (
                    ban_target.name, "disconnected %d ms after the ban committed" % cut_off_ms
                    if cut_off_ms is not None else "STILL CONNECTED after %d ms" % CUT_OFF_MS))
            if now >= next_summary:
                accepted, by_reason, receipts = tally.totals()
                say("accepted %d  %s  receipts verified %d  ledger height %d" % (
                    accepted, _refused_text(by_reason), receipts, stack.height()))
                next_summary += SUMMARY_EVERY_S
            signals.event.wait(max(0.0, min(next_tick, next_summary) - time.monotonic()))
        steps_done = ban_ms is not None

        say("publishing stopped after %d readings per device; waiting for receipts" % seq)
        deadline = time.monotonic() + DRAIN_S
        while not _all_decided([d for d in devs if d is not ban_target]) and time.monotonic() < deadline:
            time.sleep(0.1)
        height = stack.height()
        accepted, by_reason, receipts = tally.totals()
        say("summary: accepted %d  %s  receipts verified %d  ledger height %d" % (
            accepted, _refused_text(by_reason), receipts, height))
        if tally.header_height is not None:
            say("certified header of height %d retained on ll/%s/ledger/header" % (tally.header_height, site))
        checks.extend(_final_checks(devs, tally, ban_target, ban_ms, signals.received is not None, cut_off_ms, seq))
    except _Interrupted:
        pass
    except Exception as exc:  # noqa: BLE001 - any failure ends the run with the checks so far
        say("FAILED: %s: %s" % (type(exc).__name__, exc))
        failed = True
    finally:
        signals.raising = False
        for d in devs:
            d.stop()
        if monitor is not None:
            monitor.close()
        pids = stack.pids()
        stack.stop()
        left = [p for p in pids if _alive(p)]
        say("stopped %d devices, gateway, %d ledger nodes and broker; %s" % (
            len(devs), stack.nodes, "no processes left" if not left else "LEFT RUNNING: %s" % left))
        checks.append((not left, "clean shutdown"))
        signals.restore()
        ok = all(c for c, _ in checks)
        if temporary and ok and not failed and steps_done:     # an interrupted run keeps its logs
            shutil.rmtree(data_dir, ignore_errors=True)
    for good, text in checks:
        print("  [%s] %s" % ("ok" if good else "FAILED", text))
    if failed or not ok:
        print("demo FAILED (logs in %s)" % data_dir)
        return EXIT_FAILED
    if not steps_done:
        print("interrupted before every step ran (logs in %s)" % data_dir)
        return EXIT_INTERRUPTED
    print("demo passed: every step worked")
    return EXIT_OK


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _final_checks(devs: list[Any], tally: _Tally, ban_target: Any, ban_ms: int | None,
                  interrupted: bool, cut_off_ms: int | None = None, published: int = 1) -> list[tuple[bool, str]]:
    out: list[tuple[bool, str]] = []
    accepted, _, receipts = tally.totals()
    others = [d for d in devs if d is not ban_target]
    silent = [d.name for d in others if not tally.accepted.get(d.core.device_id)]
    if interrupted and not published:
        out.append((True, "interrupted before the first reading was published"))
    else:
        out.append((accepted > 0 and not silent, "accepted %d readings; every device not banned had readings accepted%s"
                    % (accepted, "" if not silent else " (none from %s)" % ", ".join(silent))))
    undecided = sum(len(d.core.sent) for d in others)      # the banned device is cut off from its receipts
    good_accepted = sum(len(tally.accepted.get(d.core.device_id, ())) for d in others)
    good_receipts = sum(tally.receipts_of.get(d.core.device_id, 0) for d in others)
    out.append((good_receipts == good_accepted and not tally.receipts_invalid and undecided == 0,
                "receipts verified %d of %d accepted (batch root, anchor tx, certified header); "
                "%d invalid, %d frames without an answer" % (good_receipts, good_accepted, len(tally.receipts_invalid),
                                                             undecided)))
    unexpected = [(reason_name(c), r) for d in others for c, r in tally.refused.get(d.core.device_id, [])]
    out.append((not unexpected, "no refusal of a device in good standing%s"
                % ("" if not unexpected else ": %r" % unexpected[:3])))
    if ban_ms is None:
        if not interrupted:
            out.append((False, "ban step not reached"))
        return out
    refusals = tally.refused.get(ban_target.core.device_id, [])
    banned = [r for c, r in refusals if c == BANNED_DEVICE]
    late = [t for t in tally.accepted.get(ban_target.core.device_id, [])
            if t > ban_ms + GATEWAY_LIMITS["registry_ttl_ms"] + 1000]
    out.append((cut_off_ms is not None and not late and len(banned) == len(refusals),
                "banned device %s cut off by the broker %s ms after the ban; refused %d times with banned-device "
                "(4) (%s); %d readings accepted after the ban"
                % (ban_target.name, cut_off_ms, len(banned), banned[-1] if banned else "no refusal", len(late))))
    return out
