"""Fault injection on real processes: ``python3 -m ledgerlink.tools.chaos --seeds A:B``.

Each seed starts a site (``ledgerlink.tools.stack``: an MQTT broker, a 4-node PBFT ledger, two gateway
processes in one shared subscription, supervised as ``ledgerlink up`` supervises it) in a temporary
directory, and CPython devices (``ledgerlink.device.Device``, each its own process) that publish readings
throughout, and with ``--board`` a MicroPython client on board32 (``../shared/tools``, signed mode, its
queues and counter on its flash). A schedule drawn from the seed then SIGKILLs, SIGSTOPs (and SIGCONTs) and SIGTERMs gateways
(one, or both at once), ledger nodes (the primary among them; at most one node down at a time, the
fault PBFT tolerates), the broker and devices, and takes devices offline for long stretches (they go
on making readings into their durable queue). The supervisor starts crashed parts again; killed devices
are started again after a pause. After the schedule the site heals (every stopped process continued,
every device online), devices stop making readings and drain, and the checks run:

- every reading a device made (its ``created.log``, written after the reading is in its durable queue)
  is in the gateway store exactly once, in an anchored batch, and its receipt was checked by the device
  (the receipts kept in its queue file, and those its ``on_receipt`` logged);
- no acknowledged ledger transaction is lost: every batch the store calls anchored is committed on
  every ledger node (a node still catching up is waited for);
- no process is left behind (site parts and devices, all that ever ran).

It prints, per seed and over all seeds: readings lost, stored twice, not anchored, without a checked
receipt; and the first new receipt after a gateway restart at p50/p99, against the 5 s target. That is,
for each gateway process the supervisor starts again: the time from its start (the supervisor's spawn)
to the first receipt a CPython device checked for a reading that this new process stored (the store's
``owner`` of the row is that gateway, received after the spawn). Receipts the other gateway sends, or
receipts of readings stored before the restart, do not count. A restart whose process stores nothing
and is killed again within the target is left out (counted as "interrupted"); one that stores nothing
for longer counts with the time it ran (at least that long); one that never stores anything counts as
infinite. (Killed again, or devices stopped making readings for the drain, within the target of its
start: interrupted.) ``--timeline`` prints, per restart, when the process logged its start, connected, subscribed,
stored its first new reading, cut the batch holding it, and when the device checked its receipt. ``--outage`` runs the backlog scenario
instead: one device offline for what a 1 Hz device makes in ``--outage-s`` seconds (600: ten minutes),
made at ``--outage-rate`` per second (time compressed: the backlog is the same size, its readings are
younger; the gateway takes readings up to 24 h old), then online; it prints the drain time, the refusals
the device saw and how many readings were lost. ``--ports`` runs the partial-frame attack instead: 1,000
loopback connections each send all but the last byte of a packet at the size limit to the embedded
broker (after a CONNECT with keep alive 0), to the dashboard's HTTP server and to the virtual board (a
raw-REPL program never ended); it prints the server's RSS growth (target < 50 MB), whether another client
was served (meanwhile; on the virtual board, which serves one client at a time, after them), and how many
connections the server closed within its time limit. Exit status 0 when every check held.

``--keep DIR`` keeps each seed's site and device directories (logs, stores, queues) under DIR.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

SITE = "chaos"
GATEWAYS = 2
NODES = 4
DEVICE_BACKOFF_S = (0.2, 2.0)
TICK_S = 0.1
DEVICE_RESTART_S = (0.5, 3.0)        # a killed device is started again after this long
STOP_S = (0.5, 3.0)                  # a SIGSTOPped process is continued after this long
OFFLINE_S = (3.0, 10.0)              # a device goes offline for this long
FAULT_GAP_S = (0.7, 2.5)             # time between faults
HEAL_S = 60.0                        # after the schedule: time for every part to run and subscribe again
LEDGER_CATCH_UP_S = 30.0             # after the drain: time for every node to hold every anchored transaction
DRAIN_S = 120.0                      # then for every device's queue to drain and its receipts to come
RECEIPT_TARGET_S = 5.0
FAULTS = ("gateway-kill", "gateways-kill", "gateway-term", "gateway-stop", "node-kill", "primary-kill",
          "node-stop", "broker-kill", "device-kill", "device-offline")


# --- the device process ----------------------------------------------------------------------------------


def device_main(directory: str) -> int:
    """Run one device from ``directory/device.json`` until SIGTERM (see the module docstring)."""
    from ledgerlink.device.client import Device

    d = Path(directory)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    cfg = json.loads((d / "device.json").read_text())
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    receipts = open(d / "receipts.log", "a")
    refusals = open(d / "refusals.log", "a")

    def on_receipt(ev: Any) -> None:
        if ev.valid:
            receipts.write("%.3f %d %s\n" % (time.time(), ev.seq, ev.frame_hash.hex()))
            receipts.flush()

    def on_refusal(ev: Any) -> None:
        refusals.write("%.3f %s %d %s\n" % (time.time(), ev.seq, ev.code, ev.reason))
        refusals.flush()

    dev = Device.open(str(d / "state"), cfg["site"], "127.0.0.1", cfg["port"], cfg["chain_id"],
                      [bytes.fromhex(k) for k in cfg["validators"]], ca_public=bytes.fromhex(cfg["ca_public"]),
                      gateway_keys={bytes.fromhex(k): bytes.fromhex(v) for k, v in cfg["gateway_keys"].items()},
                      backoff_initial=DEVICE_BACKOFF_S[0], backoff_max=DEVICE_BACKOFF_S[1],
                      on_receipt=on_receipt, on_refusal=on_refusal)
    made = len(_lines(d / "created.log"))
    if "login" in cfg:
        dev.set_login(cfg["login"]["password"], cfg["login"]["username"])
    created = open(d / "created.log", "a")
    period = 1.0 / cfg["rate"]
    running = False
    due = time.monotonic()
    drained = False
    while not stop:
        offline = (d / "offline").exists()
        if running and offline:
            dev.stop(close_queue=False)
            running = False
        elif not running and not offline:
            dev.start()
            running = True
        now = time.monotonic()
        if not (d / "done").exists():
            while now >= due:
                out = dev.publish_reading({"n": made})
                made += 1
                created.write("%d %s\n" % (out.seq, out.frame_hash.hex()))
                created.flush()
                os.fsync(created.fileno())
                due += period
        elif not drained and len(dev.queue) == 0 and dev.awaiting_receipts == 0:
            (d / "drained").write_text("%.3f\n" % time.time())
            drained = True
        time.sleep(min(0.05, max(0.0, due - time.monotonic())) if not (d / "done").exists() else 0.1)
    dev.stop()
    return 0


# --- the MicroPython device (board32) ---------------------------------------------------------------------

BOARD_HEAP = 256 * 1024
BOARD_PROGRAM = """
import os, time
from ledgerlink_client import device, mqtt, queue, transport

D = %(dir)r

def exists(p):
    try:
        os.stat(p)
        return True
    except OSError:
        return False

def count(p):
    try:
        with open(p) as f:
            return len(set(f.read().split()))
    except OSError:
        return 0

def factory():
    return mqtt.MQTTClient(transport.open_socket('127.0.0.1', %(port)d), %(client_id)r, keepalive=30,
                           username=%(username)r, password=%(password)r)

cfg = {'site': %(site)r, 'mode': 'signed', 'identity_key': bytes.fromhex(%(priv)r),
       'ca_public': bytes.fromhex(%(ca)r), 'chain_id': %(chain)r,
       'validators': [bytes.fromhex(k) for k in %(validators)r],
       'gateway_keys': {bytes.fromhex(%(gw_id)r): bytes.fromhex(%(gw_key)r)}}
client = device.DeviceClient(cfg, factory, storage=queue.FileStorage(D + '/flash'))
created = open(D + '/created.log', 'a')
receipts = open(D + '/receipts.log', 'a')
period = %(period_ms)d
due = time.ticks_ms()
valid = client.stats['receipts_valid']
made = 0
drained = False
checked = time.ticks_ms()
while True:
    if not exists(D + '/done'):
        if time.ticks_diff(time.ticks_ms(), due) >= 0:
            seq = client.publish({'n': made})
            made += 1
            created.write('%%d\\n' %% seq)
            created.flush()
            due = time.ticks_add(due, period)
    elif not drained and time.ticks_diff(time.ticks_ms(), checked) > 1000:
        checked = time.ticks_ms()
        if client.pending() == 0 and count(D + '/receipts.log') >= count(D + '/created.log'):
            open(D + '/drained', 'w').close()
            drained = True
    if exists(D + '/offline'):
        time.sleep_ms(50)
    else:
        client.step(50)
    n = client.stats['receipts_valid'] - valid
    if n:
        for r in client.receipts[-n:]:
            receipts.write('%%d\\n' %% r.seq)
        receipts.flush()
        valid += n
"""


class BoardDevice:
    """A MicroPython client on board32 (signed mode, files layout) making readings like ``device_main``; its
    flash (queues, counter) in ``directory/flash`` survives a kill."""

    def __init__(self, directory: Path, program: str) -> None:
        from ledgerlink.tools.board_runtime import Board

        self.directory = directory
        self.board = Board("files", BOARD_HEAP, workdir=directory / "board")
        self.app = directory / "app"
        self.app.mkdir()
        from ledgerlink.tools.board_runtime import APP, PREAMBLE
        from ledgerlink.tools.micropython_vm import mpy_cross

        source = self.app / (APP + ".py")
        source.write_text(PREAMBLE % str(self.board.input) + program)
        mpy_cross(source, self.app / (APP + ".mpy"))
        self.proc: subprocess.Popen | None = None
        self.pids: list[int] = []

    def start(self) -> None:
        from ledgerlink.tools.board_runtime import APP

        with open(self.directory / "device.log", "ab") as log:
            self.proc = subprocess.Popen([str(self.board.exe), "-X", "heapsize=%d" % BOARD_HEAP, "-c", "import " + APP],
                                         cwd=self.app, env=self.board._env(self.app), stdout=log,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         preexec_fn=_die_with_parent)
        self.pids.append(self.proc.pid)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


# --- the orchestrator ----------------------------------------------------------------------------------


@dataclass
class DeviceProc:
    """One device process and its directory."""
    directory: Path
    proc: subprocess.Popen | None = None
    pids: list[int] = field(default_factory=list)

    def start(self) -> None:
        with open(self.directory / "device.log", "ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "ledgerlink.tools.chaos", "--device",
                                          str(self.directory)], stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent)
        self.pids.append(self.proc.pid)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


def _die_with_parent() -> None:
    from ledgerlink.tools.stack import _child_setup

    _child_setup()


class _Counter:
    """A sequence counter in memory (the board's own counter is on its flash)."""
    n = 0

    def next(self) -> int:
        self.n += 1
        return self.n


@dataclass
class SeedResult:
    seed: int
    readings: int = 0
    lost: int = 0
    stored_twice: int = 0
    not_anchored: int = 0
    no_receipt: int = 0
    txs_lost: int = 0
    left_running: list[int] = field(default_factory=list)
    faults: dict[str, int] = field(default_factory=dict)
    receipt_after_restart_s: list[float] = field(default_factory=list)
    restarts_interrupted: int = 0
    timelines: list[str] = field(default_factory=list)
    refusals: int = 0
    board_readings: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.lost or self.stored_twice or self.not_anchored or self.no_receipt or self.txs_lost
                    or self.left_running or self.problems)


class Chaos:
    """One seed: the site, its devices, the fault schedule, the heal and the checks."""

    def __init__(self, seed: int, base: Path, devices: int, rate: float, duration: float, broker: str | None,
                 say: Callable[[str], None], board: bool = False) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.base = base
        self.n_devices = devices
        self.rate = rate
        self.duration = duration
        self.broker = broker
        self.say = say
        self.result = SeedResult(seed)
        self.stack: Any = None
        self.devices: list[Any] = []              # DeviceProc, and the BoardDevice last when there is one
        self.board = board
        self.board_id: bytes | None = None
        self.undo: list[tuple[float, Callable[[], None]]] = []
        self.stopped: set[int] = set()            # pids SIGSTOPped and not yet continued
        self.site_pids: set[int] = set()
        self.gateway_restarts: list[GatewayRestart] = []
        self.gateway_exits: dict[int, list[float]] = {}   # gateway index -> wall-clock times its exit was noticed
        self.gateway_faults: dict[int, float] = {}        # gateway index -> wall-clock time of its last kill
        self.drain_started: float | None = None           # devices stop making readings

    # --- set up ------------------------------------------------------------------------------------

    def start(self) -> None:
        from ledgerlink.tools.stack import Stack

        self.stack = Stack(self.base / "site", site=SITE, nodes=NODES, broker=self.broker, gateways=GATEWAYS,
                           progress=lambda line: None)
        self.stack.start()
        self.site_pids.update(self.stack.pids() + self.stack.standby_pids())
        s = self.stack
        requests: list[bytes] = []
        ids: list[bytes] = []
        for i in range(self.n_devices):
            d = self.base / ("dev%02d" % i)
            d.mkdir(parents=True)
            (d / "device.json").write_text(json.dumps({
                "site": SITE, "port": s.broker_port, "chain_id": s.chain_id,
                "validators": [k.hex() for k in s.validators], "ca_public": s.public_key("gw-ca").hex(),
                "gateway_keys": {s.gateway_id.hex(): s.public_key("gateway").hex()}, "rate": self.rate}))
            core = self._core(d)
            requests.append(core.registration_request(int(time.time() * 1000), attributes={"name": d.name}).payload)
            ids.append(core.device_id)
            self.devices.append(DeviceProc(d))
        if self.board:
            board_request = self._board()
            requests.append(board_request)
        s.register(requests)
        for dev, device_id in zip(self.devices, ids):
            self._login(dev.directory, device_id)
        for dev in self.devices:
            dev.start()

    def _board(self) -> bytes:
        """Stage the board32 device (its own key) and return its registration request."""
        from ledgerlink.protocol import device_protocol as dp
        from ledgerlink.core import ecdsa

        s = self.stack
        d = self.base / "board"
        d.mkdir()
        (d / "flash").mkdir()
        priv = ecdsa.generate_private_key()
        protocol = dp.DeviceProtocol(priv, SITE, _Counter())
        self.board_id = protocol.device_id
        login = s.device_login(protocol.device_id) if hasattr(s, "device_login") else {}
        program = BOARD_PROGRAM % {
            "dir": str(d), "port": s.broker_port, "client_id": login.get("username", "board-" + protocol.device_id.hex()),
            "username": login.get("username"), "password": login.get("password"), "site": SITE,
            "priv": priv.hex(), "ca": s.public_key("gw-ca").hex(), "chain": s.chain_id,
            "validators": [k.hex() for k in s.validators], "gw_id": s.gateway_id.hex(),
            "gw_key": s.public_key("gateway").hex(), "period_ms": int(1000 / self.rate)}
        self.devices.append(BoardDevice(d, program))
        return protocol.registration_request(int(time.time() * 1000)).payload

    def _login(self, d: Path, device_id: bytes) -> None:
        """Give the device in ``d`` its broker login when the site has broker accounts."""
        device_login = getattr(self.stack, "device_login", None)
        if device_login is not None:
            cfg = json.loads((d / "device.json").read_text())
            cfg["login"] = device_login(device_id)
            (d / "device.json").write_text(json.dumps(cfg))

    def _core(self, d: Path) -> Any:
        """The protocol core of the device in ``d`` (its key made now, in its state directory)."""
        from ledgerlink.device.core import DeviceCore, MemoryCounter, SequenceCounter
        from ledgerlink.device.keystore import FileKeystore

        s = self.stack
        (d / "state").mkdir(mode=0o700)
        priv = FileKeystore(str(d / "state" / "identity.key")).load_or_create()
        return DeviceCore(priv, SITE, SequenceCounter(MemoryCounter()), s.chain_id, s.validators)

    # --- faults --------------------------------------------------------------------------------------

    def schedule(self) -> list[tuple[float, str]]:
        """(time from start, fault) pairs drawn from the seed."""
        out, t = [], 0.0
        while True:
            t += self.rng.uniform(*FAULT_GAP_S)
            if t >= self.duration:
                return out
            out.append((t, self.rng.choice(FAULTS)))

    def _signal(self, pid: int | None, sig: int) -> None:
        if pid is None:
            return
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass

    def _stop_for(self, pid: int | None, now: float) -> None:
        if pid is None or pid in self.stopped:
            return
        self._signal(pid, signal.SIGSTOP)
        self.stopped.add(pid)

        def cont() -> None:
            self.stopped.discard(pid)
            self._signal(pid, signal.SIGCONT)
        self.undo.append((now + self.rng.uniform(*STOP_S), cont))

    def _live_gateways(self) -> list[subprocess.Popen]:
        return [p for p in self.stack.gateways if p is not None and p.poll() is None and p.pid not in self.stopped]

    def _node_down(self) -> bool:
        procs = self.stack.cluster.procs
        return any(p.poll() is not None or p.pid in self.stopped for p in procs.values())

    def _primary(self) -> int:
        try:
            return int(self.stack.ledger.info()["view"]) % NODES
        except Exception:  # noqa: BLE001 - a node being restarted may not answer: any node will do
            return self.rng.randrange(NODES)

    def _gateway_fault(self, proc: subprocess.Popen) -> None:
        self.gateway_faults[self.stack.gateways.index(proc) + 1] = time.time()

    def inject(self, fault: str, now: float) -> None:
        s = self.stack
        gws = self._live_gateways()
        if fault in ("gateway-kill", "gateway-term", "gateway-stop") and gws:
            p = self.rng.choice(gws)
            if fault == "gateway-stop":
                self._stop_for(p.pid, now)
            else:
                self._gateway_fault(p)
                self._signal(p.pid, signal.SIGKILL if fault == "gateway-kill" else signal.SIGTERM)
        elif fault == "gateways-kill":
            for p in gws:
                self._gateway_fault(p)
                self._signal(p.pid, signal.SIGKILL)
        elif fault in ("node-kill", "primary-kill", "node-stop"):
            if self._node_down():
                return
            i = self._primary() if fault == "primary-kill" else self.rng.randrange(NODES)
            p = s.cluster.procs.get(i)
            if fault == "node-stop":
                self._stop_for(p.pid if p else None, now)
            else:
                self._signal(p.pid if p else None, signal.SIGKILL)
        elif fault == "broker-kill":
            if s.broker is not None and s.broker.pid not in self.stopped:
                self._signal(s.broker.pid, signal.SIGKILL)
        elif fault == "device-kill":
            dev = self.rng.choice(self.devices)
            if dev.alive() and dev.proc.pid not in self.stopped:
                dev.proc.kill()
                dev.proc.wait()
                self.undo.append((now + self.rng.uniform(*DEVICE_RESTART_S), dev.start))
        elif fault == "device-offline":
            dev = self.rng.choice(self.devices)
            flag = dev.directory / "offline"
            if not flag.exists():
                flag.write_text("")
                self.undo.append((now + self.rng.uniform(*OFFLINE_S), lambda f=flag: f.unlink(missing_ok=True)))
        else:
            return
        self.result.faults[fault] = self.result.faults.get(fault, 0) + 1

    def supervise(self) -> None:
        for line in self.stack.supervise():
            found = re.match(r"gateway(?: (\d+))? (restarted|exited) ", line)
            if found is None:
                continue
            index = int(found.group(1) or 1)
            now = time.time()
            if found.group(2) == "exited":
                self.gateway_exits.setdefault(index, []).append(now)
                continue
            log = self.base / "site" / ("%s.log" % ("gateway" if index == 1 else "gateway-%d" % index))
            self.gateway_restarts.append(GatewayRestart(index, now, self.gateway_faults.get(index),
                                                        log.stat().st_size if log.exists() else 0))
        self.site_pids.update(self.stack.pids() + self.stack.standby_pids())

    def run_undos(self, now: float, everything: bool = False) -> None:
        due = [u for u in self.undo if everything or u[0] <= now]
        self.undo = [u for u in self.undo if u not in due]
        for _, fn in due:
            fn()

    # --- the run ----------------------------------------------------------------------------------------

    def run(self) -> SeedResult:
        try:
            self.start()
            t0 = time.monotonic()
            for at, fault in self.schedule():
                while time.monotonic() - t0 < at:
                    self.run_undos(time.monotonic())
                    self.supervise()
                    time.sleep(TICK_S)
                self.inject(fault, time.monotonic())
            while time.monotonic() - t0 < self.duration:
                self.run_undos(time.monotonic())
                self.supervise()
                time.sleep(TICK_S)
            self.heal()
            self.drain()
            self.check_ledger()
        except Exception as exc:  # noqa: BLE001 - reported as this seed's problem, the site still stopped
            self.result.problems.append("%s: %s" % (type(exc).__name__, exc))
        finally:
            self.shutdown()
        self.check()
        return self.result

    def heal(self) -> None:
        self.run_undos(0, everything=True)
        for pid in list(self.stopped):
            self._signal(pid, signal.SIGCONT)
        self.stopped.clear()
        for dev in self.devices:
            (dev.directory / "offline").unlink(missing_ok=True)
            if not dev.alive():
                dev.start()
        deadline = time.monotonic() + HEAL_S
        while True:
            self.supervise()
            parts = self.stack.status()["parts"]
            if all(p["state"] == "running" and p["pid"] for p in parts):
                return
            if time.monotonic() > deadline:
                raise RuntimeError("site not healed within %g s: %s" % (HEAL_S, [p for p in parts if p["state"] != "running"]))
            time.sleep(TICK_S)

    def drain(self) -> None:
        self.drain_started = time.time()
        for dev in self.devices:
            (dev.directory / "done").write_text("")
        deadline = time.monotonic() + DRAIN_S
        while not all((dev.directory / "drained").exists() for dev in self.devices):
            if time.monotonic() > deadline:
                left = [dev.directory.name for dev in self.devices if not (dev.directory / "drained").exists()]
                self.result.problems.append("devices not drained within %g s: %s" % (DRAIN_S, ", ".join(left)))
                return
            self.supervise()
            for dev in self.devices:
                if not dev.alive():
                    dev.start()
            time.sleep(TICK_S)

    def shutdown(self) -> None:
        for pid in list(self.stopped):
            self._signal(pid, signal.SIGCONT)
        for dev in self.devices:
            if dev.alive():
                dev.proc.send_signal(signal.SIGTERM)
        for dev in self.devices:
            if dev.proc is not None:
                try:
                    dev.proc.wait(15)
                except subprocess.TimeoutExpired:
                    dev.proc.kill()
                    dev.proc.wait()
        if self.stack is not None:
            self.site_pids.update(self.stack.pids() + self.stack.standby_pids())
            self.stack.stop()

    # --- the checks ------------------------------------------------------------------------------------

    def check(self) -> None:
        r = self.result
        created: dict[bytes, tuple[str, int]] = {}
        receipts: set[bytes] = set()
        receipt_times: dict[bytes, float] = {}     # frame hash -> when its device first checked its receipt
        for dev in self.devices:
            if isinstance(dev, BoardDevice):
                self._check_board(dev)
                continue
            for line in _lines(dev.directory / "created.log"):
                seq, h = line.split()
                created[bytes.fromhex(h)] = (dev.directory.name, int(seq))
            for line in _lines(dev.directory / "receipts.log"):
                t, _, h = line.split()
                receipts.add(bytes.fromhex(h))
                receipt_times[bytes.fromhex(h)] = min(float(t), receipt_times.get(bytes.fromhex(h), float(t)))
            receipts.update(_kept_receipts(dev.directory / "state" / "queue.db"))
            r.refusals += len(_lines(dev.directory / "refusals.log"))
        r.readings += len(created)
        db = self.base / "site" / "gateway.db"
        stored, anchored, anchored_txs = _store(db) if db.exists() else ({}, set(), [])
        ours = {h: n for h, n in stored.items() if h in created}
        r.lost += sum(1 for h in created if h not in stored)
        r.stored_twice += sum(n - 1 for n in ours.values() if n > 1)
        r.not_anchored += sum(1 for h in created if h in stored and h not in anchored)
        r.no_receipt += sum(1 for h in created if h not in receipts)
        self._receipts_after_restarts(db, receipt_times)
        pids = self.site_pids | {p for dev in self.devices for p in dev.pids}
        deadline = time.monotonic() + 5
        while any(_alive(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.1)
        r.left_running = sorted(p for p in pids if _alive(p))

    def _receipts_after_restarts(self, db: Path, receipt_times: dict[bytes, float]) -> None:
        """The first new receipt after each gateway restart (module docstring), and its timeline."""
        from ledgerlink.tools.broker_access import gateway_username

        r = self.result
        end_of_run = time.time()
        for rs in self.gateway_restarts:
            until = min([t for t in self.gateway_exits.get(rs.index, []) if t > rs.at] or [end_of_run])
            first = _first_new_frame(db, gateway_username(SITE, rs.index), rs.at, until, receipt_times) \
                if db.exists() else None
            if first is None:
                if min(until, self.drain_started or until) - rs.at < RECEIPT_TARGET_S:
                    r.restarts_interrupted += 1
                    continue
                wait = until - rs.at if until < end_of_run else float("inf")
            else:
                wait = first["receipt"] - rs.at
            r.receipt_after_restart_s.append(wait)
            r.timelines.append(self._timeline(rs, first, wait))

    def _timeline(self, rs: "GatewayRestart", first: dict[str, float] | None, wait: float) -> str:
        """One line: the restart's steps, in seconds after the supervisor started the process."""
        log = self.base / "site" / ("gateway.log" if rs.index == 1 else "gateway-%d.log" % rs.index)
        steps = [("killed", rs.fault - rs.at if rs.fault is not None and rs.fault <= rs.at else None)]
        steps += [(name, t - rs.at if t is not None else None) for name, t in _log_times(log, rs.log_offset)]
        if first is not None:
            steps += [("first new reading stored", first["stored"] - rs.at),
                      ("its batch cut", first["batch"] - rs.at if first["batch"] else None),
                      ("its receipt checked by the device", first["receipt"] - rs.at)]
        return "gateway %d restarted: %s; first new receipt %s" % (
            rs.index, ", ".join("%s %s" % (name, "-" if t is None else "%+.2f s" % t) for name, t in steps),
            "never" if wait == float("inf") else "%.2f s" % wait)

    def _check_board(self, dev: BoardDevice) -> None:
        """The board device's readings by seq: stored once, anchored, receipt checked on the board."""
        r = self.result
        created = {int(x) for x in _lines(dev.directory / "created.log")}
        receipts = {int(x) for x in _lines(dev.directory / "receipts.log")}
        db = self.base / "site" / "gateway.db"
        stored: dict[int, int] = {}
        anchored: set[int] = set()
        if db.exists():
            con = sqlite3.connect("file:%s?mode=ro" % db, uri=True, timeout=10)
            try:
                for seq, n in con.execute("SELECT seq, COUNT(*) FROM messages WHERE device = ? GROUP BY seq",
                                          (self.board_id,)):
                    stored[seq] = n
                anchored = {row[0] for row in con.execute(
                    "SELECT m.seq FROM messages m JOIN batches b ON m.id BETWEEN b.first_id AND b.last_id "
                    "AND m.owner = b.owner WHERE b.status = 'anchored' AND m.device = ?", (self.board_id,))}
            finally:
                con.close()
        r.board_readings = len(created)
        r.readings += len(created)
        r.lost += sum(1 for q in created if q not in stored)
        r.stored_twice += sum(n - 1 for n in stored.values() if n > 1)
        r.not_anchored += sum(1 for q in created if q in stored and q not in anchored)
        r.no_receipt += sum(1 for q in created if q not in receipts)

    def check_ledger(self) -> None:
        """Count the anchor transactions the store holds as anchored that no node of the healed ledger holds
        committed; a node that is still catching up is waited for (``LEDGER_CATCH_UP_S``)."""
        import hashlib

        db = self.base / "site" / "gateway.db"
        hashes = [hashlib.sha256(tx).digest() for tx in (_store(db)[2] if db.exists() else [])]
        deadline = time.monotonic() + LEDGER_CATCH_UP_S
        while True:
            missing = [h for h in hashes if not self._committed_everywhere(h)]
            if not missing or time.monotonic() > deadline:
                break
            self.supervise()
            time.sleep(0.5)
        self.result.txs_lost = sum(1 for h in missing if not self._committed_anywhere(h))
        behind = len(missing) - self.result.txs_lost
        if behind:
            self.result.problems.append("%d anchored transactions not on every node %g s after heal"
                                        % (behind, LEDGER_CATCH_UP_S))

    def _node_status(self, i: int, tx_hash: bytes) -> str | None:
        try:
            return self.stack.ledger.request_to(i, "status", hash=tx_hash).get("status")
        except Exception:  # noqa: BLE001 - a node that does not answer holds nothing we can count
            return None

    def _committed_everywhere(self, tx_hash: bytes) -> bool:
        return all(self._node_status(i, tx_hash) == "committed" for i in range(NODES))

    def _committed_anywhere(self, tx_hash: bytes) -> bool:
        return any(self._node_status(i, tx_hash) == "committed" for i in range(NODES))


@dataclass
class GatewayRestart:
    """A gateway process started again by the supervisor."""
    index: int
    at: float                   # wall-clock time of the spawn
    fault: float | None         # wall-clock time the chaos schedule last killed this gateway
    log_offset: int             # its log's size at the spawn


LOG_STEPS = (("logged its start", b" starting"), ("connected", b"MQTT connected"), ("subscribed", b"subscribed"))


def _log_times(log: Path, offset: int) -> list[tuple[str, float | None]]:
    """Wall-clock times of the first lines of each of ``LOG_STEPS`` in ``log`` after ``offset``."""
    import datetime

    found: dict[str, float] = {}
    try:
        with open(log, "rb") as f:
            f.seek(offset)
            lines = f.read().splitlines()
    except OSError:
        lines = []
    for line in lines:
        for name, marker in LOG_STEPS:
            if name not in found and marker in line:
                try:
                    found[name] = datetime.datetime.strptime(line[:23].decode(), "%Y-%m-%d %H:%M:%S,%f").timestamp()
                except ValueError:
                    pass
    return [(name, found.get(name)) for name, _ in LOG_STEPS]


def _first_new_frame(db: Path, owner: str, since: float, until: float,
                     receipt_times: dict[bytes, float]) -> dict[str, float] | None:
    """Of the readings ``owner`` stored from ``since`` to ``until`` (wall-clock seconds), the one whose receipt a
    device checked first: {"stored", "batch" (the batch's creation, 0 when unknown), "receipt"}; None if none."""
    con = sqlite3.connect("file:%s?mode=ro" % db, uri=True, timeout=10)
    try:
        rows = con.execute("SELECT m.frame_hash, m.received_ms, (SELECT b.created_ms FROM batches b WHERE b.owner = "
                           "m.owner AND m.id BETWEEN b.first_id AND b.last_id) FROM messages m WHERE m.owner = ? "
                           "AND m.received_ms >= ? AND m.received_ms < ?",
                           (owner, int(since * 1000), int(until * 1000))).fetchall()
    finally:
        con.close()
    best = None
    for h, received_ms, batch_ms in rows:
        t = receipt_times.get(bytes(h))
        if t is not None and (best is None or t < best["receipt"]):
            best = {"stored": received_ms / 1000, "batch": (batch_ms or 0) / 1000, "receipt": t}
    return best


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def _lines(path: Path) -> list[str]:
    try:
        return [line for line in path.read_text().splitlines() if line.strip()]
    except FileNotFoundError:
        return []


def _kept_receipts(path: Path) -> set[bytes]:
    if not path.exists():
        return set()
    con = sqlite3.connect("file:%s?mode=ro" % path, uri=True, timeout=10)
    try:
        return {bytes(row[0]) for row in con.execute("SELECT hash FROM receipts")}
    except sqlite3.Error:
        return set()
    finally:
        con.close()


def _store(db: Path) -> tuple[dict[bytes, int], set[bytes], list[bytes]]:
    """(times each frame hash is stored, hashes in anchored batches, transactions of anchored batches)."""
    con = sqlite3.connect("file:%s?mode=ro" % db, uri=True, timeout=10)
    try:
        stored: dict[bytes, int] = {}
        for (h,) in con.execute("SELECT frame_hash FROM messages"):
            stored[bytes(h)] = stored.get(bytes(h), 0) + 1
        anchored = {bytes(row[0]) for row in con.execute(
            "SELECT m.frame_hash FROM messages m JOIN batches b ON m.id BETWEEN b.first_id AND b.last_id "
            "AND m.owner = b.owner WHERE b.status = 'anchored'")}
        txs = [bytes(row[0]) for row in con.execute("SELECT tx FROM batches WHERE status = 'anchored'")]
        return stored, anchored, txs
    finally:
        con.close()


# --- the backlog scenario ---------------------------------------------------------------------------


def outage(base: Path, outage_s: int, rate: float, broker: str | None, say: Callable[[str], None]) -> dict[str, Any]:
    """One device offline while it makes ``outage_s`` readings (a 1 Hz device's ``outage_s`` seconds, made at
    ``rate``/s), then online: drain time, refusals seen, readings lost."""
    c = Chaos(0, base, 1, rate, 0, broker, say)
    try:
        c.start()
        dev = c.devices[0]
        dev.proc.send_signal(signal.SIGTERM)
        dev.proc.wait(15)
        (dev.directory / "offline").write_text("")
        dev.start()
        deadline = time.monotonic() + outage_s / rate + 60
        while len(_lines(dev.directory / "created.log")) < outage_s:
            if time.monotonic() > deadline:
                raise RuntimeError("the device made too few readings")
            c.supervise()
            time.sleep(TICK_S)
        (dev.directory / "done").write_text("")
        t_online = time.time()
        (dev.directory / "offline").unlink()
        deadline = time.monotonic() + DRAIN_S + outage_s / 8
        while not (dev.directory / "drained").exists():
            if time.monotonic() > deadline:
                c.result.problems.append("not drained")
                break
            c.supervise()
            time.sleep(TICK_S)
        drained_s = float((dev.directory / "drained").read_text()) - t_online if (dev.directory / "drained").exists() else None
    except Exception as exc:  # noqa: BLE001 - reported
        c.result.problems.append("%s: %s" % (type(exc).__name__, exc))
        drained_s = None
    finally:
        c.shutdown()
    c.check()
    return {"readings": c.result.readings, "drained_s": drained_s, "refusals": c.result.refusals,
            "lost": c.result.lost, "no_receipt": c.result.no_receipt, "stored_twice": c.result.stored_twice,
            "problems": c.result.problems, "left_running": c.result.left_running}


# --- the partial-frame attack on our ports ------------------------------------------------------------


ATTACK_CONNECTIONS = 1000
ATTACK_HOLD_S = 2.0                  # time the attack is held before memory is measured


def rss_kib(pid: int) -> int:
    """Resident memory of process ``pid`` in KiB (Linux)."""
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS for pid %d" % pid)


def _mqtt_partial(packet_bytes: int) -> tuple[bytes, bytes]:
    """(CONNECT with keep alive 0, all but the last byte of a PUBLISH of ``packet_bytes`` bytes)."""
    from ledgerlink.mqtt5 import encode_connect, packet

    publish = packet(0x30, b"\x00\x01t" + b"\x00" + b"x" * max(0, packet_bytes - 10))
    return encode_connect("", 0, True), publish[:-1]


HTTP_LINE_MAX = 65536                # http.server answers a longer header line with an error at once


def _http_partial(packet_bytes: int) -> tuple[bytes, bytes]:
    """(nothing, a GET whose header line is ``packet_bytes`` long, at most just under http.server's line
    limit, and never ends)."""
    return b"", b"GET / HTTP/1.1\r\nX-Fill: " + b"a" * max(0, min(packet_bytes, HTTP_LINE_MAX - 100) - 30)


def _board_partial(packet_bytes: int) -> tuple[bytes, bytes]:
    """(raw-REPL mode, all but the end of a program of ``packet_bytes`` bytes)."""
    return b"\x01", b"x=1\n" * (packet_bytes // 4)


def _open_attack(port: int, first: bytes, partial: bytes, count: int) -> list[socket.socket]:
    conns = []
    for _ in range(count):
        try:
            c = socket.create_connection(("127.0.0.1", port), timeout=5)
        except OSError:
            continue
        c.setblocking(False)
        try:
            if first:
                c.send(first)
            c.send(partial)
        except OSError:
            pass
        conns.append(c)
    return conns


def _closed_by_server(conns: list[socket.socket], closed: set[socket.socket]) -> None:
    """Add to ``closed`` those of ``conns`` the server has closed (reading what it sent)."""
    for c in conns:
        if c in closed:
            continue
        try:
            while c.recv(65536):
                pass
            closed.add(c)
        except BlockingIOError:
            pass
        except OSError:
            closed.add(c)


def _served_mqtt(port: int) -> bool:
    """A client connects, subscribes and gets back its own QoS 1 message."""
    import queue as queue_mod

    import paho.mqtt.client as paho

    got: queue_mod.Queue = queue_mod.Queue()
    c = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="ll-attack-probe", protocol=paho.MQTTv5)
    c.on_message = lambda cl, u, m: got.put(bytes(m.payload))
    c.on_subscribe = lambda cl, u, mid, codes, p: cl.publish("probe/t", b"served", qos=1)
    c.on_connect = lambda cl, u, f, r, p: cl.subscribe("probe/t", qos=1)
    try:
        c.connect("127.0.0.1", port, keepalive=30)
        c.loop_start()
        return got.get(timeout=10) == b"served"
    except Exception:  # noqa: BLE001 - not served
        return False
    finally:
        c.loop_stop()
        c.disconnect()


def _served_http(port: int) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen("http://127.0.0.1:%d/" % port, timeout=10) as resp:
            return resp.status == 200
    except OSError:
        return False


def _served_board(port: int) -> bool:
    """A client enters the raw REPL, runs ``print(1+1)`` and reads its output, as mpremote does."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as c:
            c.sendall(b"\r\x03\x01")
            if _read_until(c, b"to exit\r\n>") is None:
                return False
            c.sendall(b"print(1+1)\x04")
            got = _read_until(c, b"\x04>")
            return got is not None and got.startswith(b"OK2")
    except OSError:
        return False


def _read_until(c: socket.socket, end: bytes) -> bytes | None:
    """What ``c`` sends up to and including ``end``; None when it closes first."""
    got = b""
    while not got.endswith(end):
        data = c.recv(4096)
        if not data:
            return None
        got += data
    return got


ATTACKS = {"mqtt": (_mqtt_partial, _served_mqtt), "http": (_http_partial, _served_http),
           "board": (_board_partial, _served_board)}


def attack(kind: str, pid: int, port: int, packet_bytes: int, connections: int, timeout_s: float) -> dict[str, Any]:
    """Open ``connections`` connections to ``port`` (process ``pid``), each sending all but the last byte of a
    ``packet_bytes`` packet (MQTT: after a CONNECT with keep alive 0; HTTP: a request header line); measure
    the target's RSS growth while they are held, whether another client is served meanwhile, and how many
    the target closed within ``timeout_s`` (its packet or connection time limit) and a margin. The virtual
    board serves one client at a time, as a serial port does: there the other client is served after the
    attack's connections were closed."""
    make, served = ATTACKS[kind]
    first, partial = make(packet_bytes)
    before = rss_kib(pid)
    started = time.monotonic()
    conns = _open_attack(port, first, partial, connections)
    time.sleep(ATTACK_HOLD_S)
    held = rss_kib(pid)
    ok = served(port) if kind != "board" else None
    peak = max(held, rss_kib(pid))
    deadline = time.monotonic() + timeout_s + 5
    closed: set[socket.socket] = set()
    _closed_by_server(conns, closed)
    while len(closed) < len(conns) and time.monotonic() < deadline:
        time.sleep(0.5)
        _closed_by_server(conns, closed)
        peak = max(peak, rss_kib(pid))
    closed_within_s = time.monotonic() - started
    if ok is None:
        ok = served(port)
    for c in conns:
        c.close()
    return {"kind": kind, "connections": len(conns), "packet_bytes": packet_bytes, "rss_before_mib": before / 1024,
            "rss_growth_mib": (peak - before) / 1024, "served": ok, "closed": len(closed),
            "closed_within_s": closed_within_s}


def _start_target(kind: str, packet_bytes: int, timeout_s: float, log_path: Path) -> tuple[subprocess.Popen, int]:
    """The embedded broker with the site's limits, the dashboard's HTTP server, or the virtual board (its
    command time limit ``timeout_s``), as a child process."""
    from ledgerlink.tools.stack import MAX_CONNECTIONS, MAX_KEEPALIVE_S, free_port, wait_listening

    port = free_port()
    if kind == "mqtt":
        cmd = [sys.executable, "-m", "ledgerlink.tools.mqtt_broker", "--port", str(port), "--max-packet-size",
               str(packet_bytes + 16), "--max-connections", str(MAX_CONNECTIONS), "--max-keepalive",
               str(MAX_KEEPALIVE_S), "--packet-timeout", str(timeout_s), "--log-level", "WARNING"]
    elif kind == "board":
        cmd = [sys.executable, "-m", "ledgerlink.tools.virtual_board", "--port", str(port),
               "--command-timeout", str(timeout_s)]
    else:
        cmd = [sys.executable, "-m", "ledgerlink.tools.chaos", "--serve-http", str(port)]
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                preexec_fn=_die_with_parent)
    try:
        wait_listening(proc, kind, "127.0.0.1", port, log_path, 30)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    time.sleep(0.5)
    return proc, port


def serve_http(port: int) -> int:
    """The dashboard's HTTP server with a fixed page, until SIGTERM (a target for ``attack``)."""
    from ledgerlink.gateway.dashboard import DashboardServer

    server = DashboardServer("127.0.0.1", port, lambda path, query: (200, "text/plain", b"ok\n")).start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    stop.wait()
    server.stop()
    return 0


def port_attacks(connections: int, packet_bytes: int, timeout_s: float, say: Callable[[str], None]) -> bool:
    """Run the attack on the embedded broker, the dashboard's HTTP server and the virtual board (``timeout_s``:
    the broker's packet and the board's command time limit); True when all held."""
    from ledgerlink.service_http import CONNECTION_S as HTTP_CONNECTION_S
    from ledgerlink.tools import virtual_board

    ok = True
    sizes = {"mqtt": packet_bytes, "http": min(packet_bytes, HTTP_LINE_MAX - 100),
             "board": virtual_board.MAX_PROGRAM_BYTES}
    for kind, limit_s in (("mqtt", timeout_s), ("http", HTTP_CONNECTION_S),
                          ("board", virtual_board.MAX_CONNECTIONS * timeout_s)):
        with tempfile.TemporaryDirectory(prefix="ll-attack-") as tmp:
            proc, port = _start_target(kind, packet_bytes, timeout_s, Path(tmp) / (kind + ".log"))
            try:
                r = attack(kind, proc.pid, port, sizes[kind], connections, limit_s)
            finally:
                proc.terminate()
                proc.wait(10)
        held = r["rss_growth_mib"] < ATTACK_RSS_MIB and r["served"] and r["closed"] == r["connections"]
        ok = ok and held
        say("%s port: %d connections each holding all but 1 byte of a %d-byte packet: RSS %.1f MiB, grew %.1f MiB "
            "(target < %d); another client served%s: %s; closed by the server: %d within %.1f s: %s"
            % ({"mqtt": "embedded MQTT broker", "http": "dashboard HTTP", "board": "virtual board"}[kind],
               r["connections"], r["packet_bytes"],
               r["rss_before_mib"], r["rss_growth_mib"], ATTACK_RSS_MIB,
               " after them (one client at a time, as on a serial port)" if kind == "board" else "",
               "yes" if r["served"] else "NO",
               r["closed"], r["closed_within_s"], "ok" if held else "FAILED"))
    return ok


ATTACK_RSS_MIB = 50


# --- command ------------------------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _seconds(v: float | None) -> str:
    return "-" if v is None else "%.2f s" % v


def _seeds(text: str) -> range:
    a, _, b = text.partition(":")
    if not a.isdigit() or (b and not b.isdigit()):
        raise argparse.ArgumentTypeError("--seeds is A:B (seeds A..B-1) or A")
    return range(int(a), int(b)) if b else range(int(a), int(a) + 1)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python3 -m ledgerlink.tools.chaos", description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=_seeds, default=range(0, 1), help="A:B runs seeds A..B-1 (default 0:1)")
    p.add_argument("--devices", type=int, default=3, help="CPython devices per seed (default 3)")
    p.add_argument("--rate", type=float, default=2.0, help="readings per second per device (default 2)")
    p.add_argument("--duration", type=float, default=15.0, help="seconds of faults per seed (default 15)")
    p.add_argument("--broker", choices=("auto", "mosquitto", "embedded"), default=None)
    p.add_argument("--board", action="store_true",
                   help="add a MicroPython client on board32 (../shared/tools/micropython-board32) to each seed")
    p.add_argument("--outage", action="store_true", help="run the backlog scenario instead of fault schedules")
    p.add_argument("--outage-s", type=int, default=600, help="readings of the 1 Hz device's outage (default 600)")
    p.add_argument("--outage-rate", type=float, default=40.0, help="readings per second made while offline")
    p.add_argument("--keep", metavar="DIR", help="keep each seed's directories under DIR")
    p.add_argument("--timeline", action="store_true",
                   help="print each gateway restart's steps up to its first new receipt")
    p.add_argument("--ports", action="store_true",
                   help="run the partial-frame attack on the embedded broker and the dashboard's HTTP port instead")
    p.add_argument("--connections", type=int, default=ATTACK_CONNECTIONS, help="attack connections (default 1000)")
    p.add_argument("--packet-bytes", type=int, default=None,
                   help="attack packet size (default: the site broker's packet limit)")
    p.add_argument("--packet-timeout", type=float, default=None, help="the broker's packet timeout (default its own)")
    p.add_argument("--device", metavar="DIR", help=argparse.SUPPRESS)
    p.add_argument("--serve-http", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.device:
        return device_main(args.device)
    if args.serve_http:
        return serve_http(args.serve_http)
    t_start = time.monotonic()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))    # the site stopped and every process continued

    def say(line: str) -> None:
        print("[%6.1fs] %s" % (time.monotonic() - t_start, line), flush=True)

    if args.ports:
        from ledgerlink.tools.mqtt_broker import PACKET_TIMEOUT_S
        from ledgerlink.tools.stack import PACKET_SIZE_LIMIT

        return 0 if port_attacks(args.connections, args.packet_bytes or PACKET_SIZE_LIMIT,
                                 args.packet_timeout or PACKET_TIMEOUT_S, say) else 1
    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="ll-chaos-"))
    root.mkdir(parents=True, exist_ok=True)
    try:
        if args.outage:
            res = outage(root / "outage", args.outage_s, args.outage_rate, args.broker, say)
            say("outage: a 1 Hz device offline %d s (%d readings, made at %g/s): drained in %s; refusals seen %d "
                "(each retried); lost %d, stored twice %d, without receipt %d; processes left %d%s"
                % (args.outage_s, res["readings"], args.outage_rate, _seconds(res["drained_s"]), res["refusals"],
                   res["lost"], res["stored_twice"], res["no_receipt"], len(res["left_running"]),
                   "; problems: %s" % "; ".join(res["problems"]) if res["problems"] else ""))
            ok = not (res["lost"] or res["stored_twice"] or res["no_receipt"] or res["left_running"] or res["problems"])
            return 0 if ok else 1
        results = []
        for seed in args.seeds:
            c = Chaos(seed, root / ("seed%d" % seed), args.devices, args.rate, args.duration, args.broker, say,
                      args.board)
            r = c.run()
            results.append(r)
            say("seed %d: %s; %d readings (%d by the board32 client): lost %d, stored twice %d, not anchored %d, without receipt %d; "
                "ledger txs lost %d; processes left %d; refusals seen %d; first new receipt after gateway restart %s%s"
                % (seed, "ok" if r.ok else "FAILED", r.readings, r.board_readings, r.lost, r.stored_twice, r.not_anchored, r.no_receipt,
                   r.txs_lost, len(r.left_running), r.refusals,
                   ", ".join("%.1f s" % x for x in r.receipt_after_restart_s) or "-",
                   "; faults: " + ", ".join("%s %d" % kv for kv in sorted(r.faults.items()))
                   + ("; problems: " + "; ".join(r.problems) if r.problems else "")))
            if args.timeline:
                for line in r.timelines:
                    say("seed %d: %s" % (seed, line))
        waits = [x for r in results for x in r.receipt_after_restart_s]
        p99 = percentile(waits, 0.99)
        say("over %d seeds: readings %d; lost %d; stored twice %d; not anchored %d; without receipt %d; "
            "ledger txs lost %d; processes left %d; first new receipt after a gateway restart p50 %s, p99 %s, "
            "max %s (target %g s, %d restarts, %d over target, %d interrupted before storing); seeds failing: %s"
            % (len(results), sum(r.readings for r in results), sum(r.lost for r in results),
               sum(r.stored_twice for r in results), sum(r.not_anchored for r in results),
               sum(r.no_receipt for r in results), sum(r.txs_lost for r in results),
               sum(len(r.left_running) for r in results), _seconds(percentile(waits, 0.5)), _seconds(p99),
               _seconds(max(waits) if waits else None), RECEIPT_TARGET_S, len(waits),
               sum(1 for w in waits if w > RECEIPT_TARGET_S), sum(r.restarts_interrupted for r in results),
               " ".join(str(r.seed) for r in results if not r.ok) or "none"))
        return 0 if all(r.ok for r in results) else 1
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
