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

Command line (prints QEMU instructions per core operation, from the bench's inputs):
``python3 -m ledgerlink.tools.qemu_board [--heap-kb 110|190] [--json FILE]``.
The board tools must be present at ../shared/tools beside the project; without them every entry
point fails with a message naming the missing file.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Mapping

from ledgerlink.tools import deploy
from ledgerlink.tools.stack import free_port

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SHARED_TOOLS = PROJECT_ROOT.parent / "shared" / "tools"
QEMU_DIR = SHARED_TOOLS / "qemu-board"
FIRMWARE = {110: "firmware-mps2an385-heap110k.elf", 190: "firmware-mps2an385-heap190k.elf"}
RAW_BANNER = b"raw REPL; CTRL-B to exit\r\n>"
START_TIMEOUT_S = 20.0

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
            if not chunk:
                raise ConnectionError("the QEMU board closed its REPL (log %s)" % self.log)
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m ledgerlink.tools.qemu_board",
                                     description="QEMU instructions per core operation on the QEMU board.")
    parser.add_argument("--heap-kb", type=int, choices=sorted(FIRMWARE), default=110)
    parser.add_argument("--json", metavar="FILE", help="also write the table as JSON to FILE")
    args = parser.parse_args(argv)
    try:
        table = instructions_table(args.heap_kb)
    except (FileNotFoundError, RuntimeError, TimeoutError) as exc:
        print("qemu_board: error: %s" % exc, file=sys.stderr)
        return 1
    print("\n".join(format_instructions(table, args.heap_kb)))
    if args.json:
        Path(args.json).write_text(json.dumps({"heap_kb": args.heap_kb, "instructions": table}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
