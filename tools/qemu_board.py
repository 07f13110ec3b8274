"""The QEMU board (../shared/tools/qemu-board): MicroPython on an emulated Cortex-M3 (mps2-an385) with a
110 KB or 190 KB heap, the library in a ROMFS image, driven over its raw REPL on TCP.

``QemuBoard(image, heap_kb=110)`` starts ``run-board.sh`` with the image (``library_image`` builds it with
``deploy.build_image``: the image ``ledgerlink deploy --layout romfs`` writes, plus ``uart1.py``), holds
the REPL connection and runs programs with ``exec(code)``, which returns what the program printed and
raises ``BoardCodeError`` with the board's traceback. Variables live on between execs, as on a board
(``soft_reset`` clears them). ``uart1_port`` is the board's second UART as a TCP server on the host
(``UART(1)`` from ``uart1.py`` on the board). The board has no ``os.urandom`` and no wall clock:
``RNG_SOURCE`` defines ``rng(n)`` on the board from a seed the host passes.

``icount=0`` runs QEMU with ``-icount shift=0``: one instruction is one nanosecond of virtual time, so
``time.ticks_us()`` differences times 1000 are instruction counts, repeatable run after run to one tick
(1,000 instructions: idle time passes in host time and shifts the phase of the microsecond).

``run_cycle`` runs the whole client cycle on the board against a running stack: the board's MQTT bytes
leave on UART1 (``hardware/hil/uart_stream.py``) and ``socket_bridge.UartBridge`` relays them to the
broker; queues, counter and session sit in PSRAM outside the heap (``hardware/hil/region_storage.py``),
as on a board's flash; the host sets the board's clock before each step of the board's loop (QEMU's
tick falls behind the host's clock while the emulated CPU is busy).

Command line: ``python3 -m ledgerlink.tools.qemu_board [--heap-kb 110|190] [--json FILE]`` prints QEMU
instructions per core operation (the bench's inputs); ``--cycle`` starts a stack and prints, per mode
and firmware heap, whether the client cycle completes, its peak live heap and its wall time.
The board tools must be present at ../shared/tools beside the project; without them every entry
point fails with a message naming the missing file.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Mapping

from ledgerlink.core import cbor, cose
from ledgerlink.protocol import device_protocol as dp
from ledgerlink.tools import deploy
from ledgerlink.tools.board_runtime import CycleSite
from ledgerlink.tools.socket_bridge import UartBridge
from ledgerlink.tools.stack import free_port

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SHARED_TOOLS = PROJECT_ROOT.parent / "shared" / "tools"
QEMU_DIR = SHARED_TOOLS / "qemu-board"
FIRMWARE = {110: "firmware-mps2an385-heap110k.elf", 190: "firmware-mps2an385-heap190k.elf"}
RAW_BANNER = b"raw REPL; CTRL-B to exit\r\n>"
START_TIMEOUT_S = 20.0
PUT_CHUNK = 256

# The board's random source: SHA-256 in counter mode over a host-given seed (the port has no urandom).
RNG_SOURCE = """\
import hashlib
_rng_seed = bytes.fromhex(%r)
_rng_count = [0]
def rng(n):
    out = b''
    while len(out) < n:
        _rng_count[0] += 1
        out += hashlib.sha256(_rng_seed + _rng_count[0].to_bytes(4, 'big')).digest()
    return out[:n]
"""


class BoardCodeError(RuntimeError):
    """A program raised on the board; the message is the board's traceback."""


def tool(name: str) -> Path:
    """A file of ../shared/tools/qemu-board; FileNotFoundError naming it when missing."""
    path = QEMU_DIR / name
    if not path.is_file():
        raise FileNotFoundError("QEMU board file missing: %s (the board tools belong at ../shared/tools beside "
                                "the project, see their README)" % path)
    return path


def image_sources(extra: Mapping[str, Path] | None = None) -> dict[str, Path]:
    """Board paths of the QEMU image: the library and client as deploy lays them out, ``uart1``, ``extra``."""
    files = deploy.library_sources()
    files["lib/uart1.mpy"] = tool("uart1.py")
    files.update(extra or {})
    return files


def library_image(image: Path, extra: Mapping[str, Path] | None = None) -> Path:
    """Build the QEMU board's ROMFS image at ``image`` (``/rom/lib`` holds the library); return the path."""
    deploy.build_image(image_sources(extra), image)
    return image


class QemuBoard:
    """One emulated board: ``start`` boots it, ``exec`` runs code, ``stop`` ends QEMU."""

    def __init__(self, image: Path | None, heap_kb: int = 110, icount: int | None = None,
                 uart1: bool = False) -> None:
        if heap_kb not in FIRMWARE:
            raise ValueError("heap_kb must be one of %s" % ", ".join(map(str, FIRMWARE)))
        self.image = image
        self.heap_kb = heap_kb
        self.icount = icount
        self.port = free_port()
        self.uart1_port = free_port() if uart1 else None
        self.pid: int | None = None
        self.sock: socket.socket | None = None
        self.log = Path(tempfile.mkstemp(prefix="ledgerlink-qemu-", suffix=".log")[1])

    @property
    def url(self) -> str:
        """The REPL for mpremote (``mpremote connect URL``), once ``close_repl`` has let it go."""
        return "socket://127.0.0.1:%d" % self.port

    def start(self) -> "QemuBoard":
        env = dict(os.environ, BOARD_LOG=str(self.log))
        env.pop("ICOUNT", None)
        if self.icount is not None:
            env["ICOUNT"] = str(self.icount)
        args = [str(tool("run-board.sh")), str(tool(FIRMWARE[self.heap_kb])),
                str(self.image) if self.image is not None else "none", str(self.port)]
        if self.uart1_port is not None:
            args.append(str(self.uart1_port))
        result = subprocess.run(args, capture_output=True, text=True, env=env, timeout=START_TIMEOUT_S)
        if result.returncode != 0 or not result.stdout.strip().isdigit():
            raise RuntimeError("QEMU board did not start: %s" % (result.stderr.strip() or result.stdout.strip()))
        self.pid = int(result.stdout.strip())
        self.open_repl()
        return self

    def open_repl(self) -> None:
        """Connect to the REPL and enter raw mode (interrupting whatever runs)."""
        self.sock = socket.create_connection(("127.0.0.1", self.port), timeout=START_TIMEOUT_S)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.sendall(b"\r\x03\x03\x01")
        self._read_until(RAW_BANNER, START_TIMEOUT_S)

    def close_repl(self) -> None:
        """Let go of the REPL connection (so that mpremote can take it)."""
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def _read_until(self, marker: bytes, timeout: float) -> bytes:
        assert self.sock is not None
        data = bytearray()
        deadline = time.monotonic() + timeout
        while not data.endswith(marker):
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no %r from the QEMU board within %.0f s (got %r)" % (marker, timeout,
                                                                                       bytes(data[-200:])))
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(1)
            except socket.timeout:
                continue
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                log = self.log.read_text(errors="replace").strip()[-500:] if self.log.is_file() else ""
                raise ConnectionError("the QEMU board closed its REPL; QEMU said: %s" % (log or "nothing"))
            data += chunk
        return bytes(data[:-len(marker)])

    def exec(self, code: str, timeout: float = 120.0) -> str:
        """Run ``code`` in the board's raw REPL; return its output; BoardCodeError with the traceback."""
        if self.sock is None:
            self.open_repl()
        assert self.sock is not None
        self.sock.sendall(code.encode() + b"\x04")
        head = self._read_until(b"OK", timeout)
        if head.replace(RAW_BANNER, b"").strip(b"\r\n>"):
            raise BoardCodeError("the board did not take the program: %r" % head)
        out = self._read_until(b"\x04", timeout)
        err = self._read_until(b"\x04", timeout)
        self._read_until(b">", timeout)
        if err:
            raise BoardCodeError(err.decode("utf-8", "replace").strip())
        return out.decode("utf-8", "replace")

    def put(self, name: str, data: bytes, chunk: int = PUT_CHUNK) -> None:
        """Make ``data`` the board's global ``name`` (a bytearray), sent in pieces: the raw REPL holds a
        whole program in the heap before it runs, and a full heap there ends the firmware."""
        self.exec("%s = bytearray()" % name)
        for at in range(0, len(data), chunk):
            self.exec("%s.extend(bytes.fromhex(%r))" % (name, data[at:at + chunk].hex()))

    def soft_reset(self) -> None:
        """A soft reset: the heap and every variable are gone, the image stays mounted."""
        assert self.sock is not None
        self.sock.sendall(b"\x04")
        self._read_until(RAW_BANNER, START_TIMEOUT_S)

    def stop(self) -> None:
        self.close_repl()
        if self.pid is not None:
            try:
                os.kill(self.pid, 15)
            except ProcessLookupError:
                pass
            for _ in range(100):
                try:
                    os.kill(self.pid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.02)
            self.pid = None
        self.log.unlink(missing_ok=True)

    def __enter__(self) -> "QemuBoard":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --- instructions per operation -----------------------------------------------------------------

MEASURE = """\
gc.collect()
result = %s
gc.collect()
_t = time.ticks_us()
result = %s
_dt = time.ticks_diff(time.ticks_us(), _t)
result = None
print('ICOUNT', _dt)
"""


def instructions_table(heap_kb: int = 110) -> dict[str, int]:
    """QEMU instructions per core operation of the bench (``bench.VM_OPS`` on ``bench.Inputs``) on the board
    with ``-icount shift=0``; each operation runs once first (lazy tables), then is measured."""
    from ledgerlink.tools import bench

    with tempfile.TemporaryDirectory(prefix="ledgerlink-qemu-bench-") as tmp:
        image = library_image(Path(tmp) / "lib.romfs")
        with QemuBoard(image, heap_kb=heap_kb, icount=0) as board:
            board.exec("import gc, time\n" + RNG_SOURCE % os.urandom(16).hex() + "host_urandom = rng\n")
            board.exec(bench.vm_setup(bench.Inputs()))
            table = {}
            for name, stmt in bench.VM_OPS.items():
                out = board.exec(MEASURE % (stmt, stmt), timeout=600)
                table[name] = int(out.split("ICOUNT")[-1]) * 1000
    return table


def format_instructions(table: dict[str, int], heap_kb: int) -> list[str]:
    lines = ["QEMU board (mps2-an385 Cortex-M3, %d KB heap, library in ROMFS, -icount shift=0): "
             "instructions per operation" % heap_kb, "%-30s%16s" % ("operation", "instructions")]
    for name, count in table.items():
        lines.append("%-30s%16s" % (name, "{:,}".format(count)))
    lines.append("instructions = time.ticks_us() difference x 1000 (1 instruction = 1 ns of virtual time); "
                 "resolution 1,000; the second run of each operation, after its lazy tables are built")
    return lines


# --- the client cycle over UART1 ----------------------------------------------------------------

CYCLE_READINGS = 10
CYCLE_MODES = ("session", "signed")
FLASH_ADDRESS = 0x21400000   # mps2-an385 PSRAM above the 4 MiB the ROMFS image may take: the board's "flash"
FLASH_BYTES = 1 << 20
HIL = PROJECT_ROOT / "hardware" / "hil"

CYCLE_SETUP = """
import gc, time
from uart1 import UART
from uart_stream import UartStream
from region_storage import RegionStorage
from ledgerlink_client import device, mqtt
%(rng)s
clock = [%(now_ms)d, time.ticks_ms()]
def sync(now_ms):
    clock[0] = now_ms
    clock[1] = time.ticks_ms()
def time_ms():
    return clock[0] + time.ticks_diff(time.ticks_ms(), clock[1])
def factory():
    return mqtt.MQTTClient(UartStream(UART(1)), %(user)r, keepalive=30, username=%(user)r,
                           password=%(password)r)
h = bytes.fromhex
cfg = {'site': %(site)r, 'identity_key': h(%(priv)r), 'ca_public': h(%(ca)r), 'chain_id': %(chain)r,
       'validators': [h(k) for k in %(validators)r], 'mode': %(mode)r, 'max_results': %(n)d}
storage = RegionStorage(%(flash)d, %(flash_bytes)d)   # the board's "flash": PSRAM outside the heap
storage.replace('llcmd', device.dp.encode_commands(0, {}))   # the empty command record provisioning writes
client = device.DeviceClient(cfg, factory, storage=storage, rng=rng, time_ms=time_ms)
print('REQ', client.protocol.registration_request(client.time_ms(), 1, {'name': 'qemu-board'}).payload.hex())
gc.collect()
gc.peak_live(True)
"""
# the counters the host's loop waits on (the whole stats dict is read once, at the end: its repr is a
# large string, and one per step fragments the board's heap)
WATCHED = ("sessions_opened", "receipts_valid", "receipts_invalid")
READ_STATS = "print('STATS', %s)" % ", ".join("client.stats[%r]" % name for name in WATCHED)
COMMAND = """
from ledgerlink.core import cbor
client.protocol.update_controller(cbor.loads(controller_proof))
r = client.protocol.handle_command(client.protocol.cmd_topic, bytes(command), client.time_ms())
print('CMD', repr([r.accepted, r.action, r.args, r.reason]))
"""
RESULTS = """
client.close()
gc.collect()
print('OUT', repr([[r.valid, r.seq, r.reason, r.height] for r in client.receipts]), gc.peak_live()[0])
"""


def board_step(board: "QemuBoard", code: str) -> dict:
    """One step of the board's main loop: the host sets the board's clock first (as NTP would: QEMU's
    tick counter falls behind the host's clock while the emulated CPU is busy), then ``code`` runs."""
    out = board.exec("sync(%d)\n%s\n%s" % (int(time.time() * 1000), code, READ_STATS), timeout=120)
    return dict(zip(WATCHED, map(int, out.split("STATS ", 1)[1].split())))


def run_until(board: "QemuBoard", done, timeout_s: float) -> dict:
    deadline = time.monotonic() + timeout_s
    stats = board_step(board, "client.step(100)")
    while not done(stats) and time.monotonic() < deadline:
        stats = board_step(board, "client.step(200)")
    return stats


def cycle_image(image: Path) -> Path:
    """The QEMU image with the board side of the cycle: the UART stream and the storage outside the heap."""
    return library_image(image, {"lib/uart_stream.mpy": HIL / "uart_stream.py",
                                 "lib/region_storage.mpy": HIL / "region_storage.py"})


def command_for(site: CycleSite, priv: bytes) -> tuple[bytes, bytes]:
    """(the controller's record proof, one command it signed for the device of ``priv``)."""
    proof = site.stack._ledger().record(dp.RECORD_DEVICE, site.controller_id)
    if not proof.get("ok"):
        raise RuntimeError("no record proof of the controller: %r" % (proof,))
    device = dp.DeviceProtocol(priv, site.stack.site, None)
    expires_ms = int(time.time() * 1000) + 600_000
    body = cbor.dumps({1: device.device_id, 2: 1, 3: "open-valve", 4: {"pct": 30}, 5: expires_ms})
    return cbor.dumps(proof["proof"]), cose.sign1(body, site.controller_key, site.controller_id,
                                                   device.cmd_topic.encode())


def run_cycle(site: CycleSite, image: Path, mode: str, heap_kb: int = 110) -> dict:
    """The whole client cycle on a QEMU board with ``image`` (``cycle_image``) against ``site``'s stack: a new
    device registered from the board's own request, session open (session mode), ``CYCLE_READINGS``
    readings, every receipt checked on the board, one controller command checked. The board's MQTT
    bytes go over UART1 and ``UartBridge`` to the broker. Returns what the board reported; a board
    error (MemoryError included) raises ``BoardCodeError``."""
    stack = site.stack
    priv = stack.crypto.generate_private_key()
    device_id = stack.crypto.sha256(stack.crypto.public_key(priv, True))[:16]
    login = stack.device_login(device_id)
    setup = CYCLE_SETUP % {
        "rng": RNG_SOURCE % os.urandom(16).hex(), "now_ms": int(time.time() * 1000),
        "user": login["username"], "password": login["password"], "site": stack.site, "priv": priv.hex(),
        "ca": stack.public_key("gw-ca").hex(), "chain": stack.chain_id,
        "validators": [k.hex() for k in stack.validators], "mode": mode, "n": CYCLE_READINGS,
        "flash": FLASH_ADDRESS, "flash_bytes": FLASH_BYTES}
    report: dict = {"mode": mode, "heap_kb": heap_kb, "device_id": device_id}
    with QemuBoard(image, heap_kb=heap_kb, uart1=True) as board:
        with UartBridge(("127.0.0.1", board.uart1_port), ("127.0.0.1", stack.broker_port),
                        allow=["127.0.0.1"]) as bridge:
            request = board.exec(setup).split("REQ ")[1].split()[0]
            [report["registered"]] = stack.register([bytes.fromhex(request)])
            started = time.monotonic()
            if mode == "session":
                report["opened"] = run_until(board, lambda st: st["sessions_opened"] >= 1, 120)["sessions_opened"]
            board_step(board, "for i in range(%d):\n    client.publish({'t': 20 + i, 'i': i})" % CYCLE_READINGS)
            run_until(board, lambda st: st["receipts_valid"] + st["receipts_invalid"] >= CYCLE_READINGS, 180)
            report["stats"] = ast.literal_eval(board.exec("print(repr(client.stats))"))
            proof, command = command_for(site, priv)
            board.put("controller_proof", proof)
            board.put("command", command)
            command = board.exec(COMMAND)
            report["command"] = ast.literal_eval(command.split("CMD ", 1)[1].strip())
            receipts, peak_live = board.exec(RESULTS).split("OUT ", 1)[1].rsplit(" ", 1)
            report.update(receipts=ast.literal_eval(receipts), peak_live=int(peak_live),
                          wall_s=time.monotonic() - started, bridge_connections=bridge.connections,
                          bridge_bytes=(bridge.bytes_up, bridge.bytes_down))
    return report


def cycle_ok(report: dict) -> bool:
    """Session opened (session mode), every receipt valid, the command accepted."""
    stats = report.get("stats", {})
    return ((report["mode"] != "session" or report.get("opened") == 1)
            and stats.get("receipts_valid") == CYCLE_READINGS and stats.get("receipts_invalid") == 0
            and bool(report.get("command")) and report["command"][0] is True)


def cycle_table(data_dir: Path, heaps_kb: tuple[int, ...] = (110, 190)) -> list[dict]:
    """Each mode at each firmware heap: a stack (mosquitto, 4 ledger nodes, gateway) and one cycle per row."""
    from ledgerlink.tools.stack import Stack

    stack = Stack(data_dir / "site", site="qemusite", broker="mosquitto")
    stack.start()
    rows = []
    try:
        site = CycleSite(stack)
        image = cycle_image(data_dir / "cycle.romfs")
        for heap_kb in heaps_kb:
            for mode in CYCLE_MODES:
                try:
                    report = run_cycle(site, image, mode, heap_kb)
                    rows.append(dict(report, ok=cycle_ok(report), error=""))
                except (BoardCodeError, TimeoutError) as exc:
                    rows.append({"mode": mode, "heap_kb": heap_kb, "ok": False,
                                 "error": str(exc).strip().splitlines()[-1]})
    finally:
        stack.stop()
    return rows


def format_cycle(rows: list[dict]) -> list[str]:
    lines = ["QEMU board client cycle (library in ROMFS; session open, %d readings, every receipt checked on "
             "the board, one command; MQTT over UART1)" % CYCLE_READINGS,
             "%-9s%9s%8s%16s%9s  %s" % ("mode", "heap", "result", "peak live B", "wall s", "")]
    for r in rows:
        lines.append("%-9s%8dK%8s%16s%9s  %s" % (r["mode"], r["heap_kb"], "pass" if r["ok"] else "FAIL",
                                                  r.get("peak_live", "-"), "%.1f" % r["wall_s"] if "wall_s" in r
                                                  else "-", r["error"]))
    lines.append("peak live: gc.peak_live() over the cycle (highest live heap after any collection)")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m ledgerlink.tools.qemu_board",
                                     description="QEMU instructions per core operation on the QEMU board.")
    parser.add_argument("--heap-kb", type=int, choices=sorted(FIRMWARE), default=110)
    parser.add_argument("--cycle", action="store_true",
                        help="instead: start a stack and run the client cycle in both modes at 110 KB and 190 KB")
    parser.add_argument("--json", metavar="FILE", help="also write the table as JSON to FILE")
    args = parser.parse_args(argv)
    try:
        if args.cycle:
            with tempfile.TemporaryDirectory(prefix="ledgerlink-qemu-cycle-") as tmp:
                rows = cycle_table(Path(tmp))
            print("\n".join(format_cycle(rows)))
            result: dict = {"cycle": [{k: v for k, v in r.items() if k in ("mode", "heap_kb", "ok", "peak_live",
                                                                            "wall_s", "error")} for r in rows]}
        else:
            table = instructions_table(args.heap_kb)
            print("\n".join(format_instructions(table, args.heap_kb)))
            result = {"heap_kb": args.heap_kb, "instructions": table}
    except (FileNotFoundError, RuntimeError, TimeoutError) as exc:
        print("qemu_board: error: %s" % exc, file=sys.stderr)
        return 1
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
