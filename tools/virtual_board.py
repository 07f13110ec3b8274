"""A virtual MicroPython board on TCP, so deploy and the HIL checks run in CI without hardware.

Runtime: by default each program runs on board32 (../shared/tools/micropython-board32: 32-bit MicroPython
with its garbage collector on, a fixed heap, ROMFS and ``gc.peak_live``) with the heap of a board
profile (``--board esp32``: 110,000 bytes; ``picow``: 190,000; ``--heap`` overrides), so a program that
does not fit a board's heap fails here with MemoryError as it would there. ``--runtime wasi`` keeps the
WASI build (collection off, a roomy heap; below). A missing board32 fails loudly.

ROMFS: the board has a ROMFS partition of ``romfs_bytes`` (the profile's ``[memory] romfs_bytes``; none
when 0), kept as the host file ``<flash>.romfs`` beside the flash folder. ``mpremote romfs deploy`` and
``romfs query`` work: their fixed snippets are served on the host as the file commands are, and each
later program runs with the image mounted at ``/rom`` (``/rom/lib`` ahead of ``/lib`` on ``sys.path``, as
on boards), so ``ledgerlink deploy`` can write either layout. ``--preload`` puts the compiled library
on the board in the profile's deploy layout (``--layout`` overrides).

``VirtualBoard`` listens on 127.0.0.1 and speaks MicroPython's raw REPL over the socket, the byte
protocol mpremote uses on a serial port; pyserial's ``socket://`` URLs let mpremote connect to it:
``mpremote connect socket://127.0.0.1:PORT exec "print(1+1)"``.

Raw REPL as implemented: Ctrl-A enters raw mode (``raw REPL; CTRL-B to exit\\r\\n>``), Ctrl-B leaves
it (banner and ``>>> ``), Ctrl-C drops the pending input, Ctrl-D on an empty buffer is a soft reset
(``OK\\r\\nMPY: soft reboot\\r\\n`` then the raw banner), Ctrl-D after code answers ``OK``, runs it, and
sends stdout, ``\\x04``, the traceback, ``\\x04``, ``>``. Raw-paste mode (``\\x05A\\x01``) is supported
with flow control: ``R\\x01``, a 16-bit window, ``\\x01`` per window consumed, ``\\x04`` at the end.

The board's flash is a host folder. mpremote's file commands (``fs ls/cat/cp/mkdir/rm/rmdir/touch/
sha256sum``) send fixed snippets of code; those snippets are recognised exactly and served from the
folder on the host, with paths confined to it. Every other program runs in a fresh instance of real
MicroPython, as after a reset: on board32, a new process with the flash folder as its working directory
(``/lib`` of the flash on ``sys.path``; an absolute path in board code is the host's); on the WASI
build (``micropython_vm.run_wasm`` with the harness preamble: automatic collection off, ``-X heapsize``)
with the flash folder mounted read-write at ``/input`` (``/input/lib`` on ``sys.path``, the working
directory moved to ``/input``). Either way ``import ledgerlink.core.p256`` loads what was copied to
``/lib`` (or the ROMFS image). Files that board code writes (``open``, ``os.rename``, ``os.remove``,
``os.mkdir`` with paths relative to the working directory; an absolute path names the VM's root, not
the flash) stay in the folder for the life of the server, as on a board's flash: later execs and
mpremote's file commands see them. ``os.urandom`` is board32's own; on the WASI build it is
``host_urandom`` of the preamble (a fresh 32-byte seed from the host's ``os.urandom`` per exec, expanded
with SHA-256): that build's own reads ``/dev/urandom``, which the sandbox does not have. Not supported:
variables kept between two execs (each exec is a new MicroPython), interrupting a running program with
Ctrl-C, the friendly REPL (input there is ignored), ``mpremote mount``, ``machine`` peripherals.

Network (opt-in, ``network_allow`` / ``--network``): a real board reaches its broker over Wi-Fi with
``socket``; here each exec gets ``host_call`` and the host functions of a fresh
``socket_bridge.SocketBridge``, whose sockets board code opens with ``transport.CallTransport(host_call,
host, port)`` (on board32 ``host_call`` is a JSON-line link to the host, ``board_runtime.HostLink``; on
the WASI build the preamble of ``micropython_vm``). Only addresses in the allow list are connected to
(``--network-allow``, repeatable, addresses or networks; 127.0.0.1 by default); any other host raises
OSError on the board naming the allow list. The sockets of an exec are closed when it ends, as a reset
closes a board's. Without ``--network`` ``host_call`` is not defined. On board32 the ``socket`` module
board code imports is one whose calls raise OSError (the virtual board has no network / reaches the
network only through ``host_call``): this keeps honest board code inside the allow list; it is not a
sandbox against code that looks for the host link's own socket.

Command line: ``python3 -m ledgerlink.tools.virtual_board --port 2323 [--board esp32] [--heap N]
[--layout romfs|files] [--runtime board32|wasi] [--flash DIR] [--preload] [--network [--network-allow
ADDR]...]`` (also ``ledgerlink virtual-board``).
"""

from __future__ import annotations

import argparse
import ast
import binascii
import hashlib
import os
import posixpath
import queue
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from ledgerlink.tools import deploy
from ledgerlink.tools.board_runtime import HOST_PREAMBLE as BOARD32_HOST_PREAMBLE
from ledgerlink.tools.board_runtime import HostLink, board32
from ledgerlink.tools.micropython_vm import ERROR_MARK, GUARD, HOST_PREAMBLE, PREAMBLE, VMError, run_wasm
from ledgerlink.tools.socket_bridge import SocketBridge, parse_allow

RAW_BANNER = b"raw REPL; CTRL-B to exit\r\n"
FRIENDLY_BANNER = (b"MicroPython v1.27 on ledgerlink-virtual; WASI build\r\n"
                   b"Type \"help()\" for more information.\r\n>>> ")
SOFT_REBOOT = b"OK\r\nMPY: soft reboot\r\n"
PASTE_WINDOW = 4096
DEFAULT_HEAP = 16 * 1024 * 1024
DEFAULT_FUEL = 20_000_000_000
DEFAULT_EXEC_TIMEOUT = 300.0
DEFAULT_NETWORK_ALLOW = ("127.0.0.1",)
RUNTIMES = ("board32", "wasi")
DEFAULT_BOARD = "virtual"
IDLE_S = 30.0                  # a connection that sends nothing this long while the board waits for input is closed
COMMAND_S = 10.0               # a command (mode switch, program, raw paste) must arrive this long after its first byte
MAX_PROGRAM_BYTES = 1 << 20    # a longer program closes the connection (mpremote sends files in small chunks)
MAX_CONNECTIONS = 4            # one served, the others wait their turn as on a serial port; more are closed at once
ROMFS_MAGIC = b"\xd2\xcd\x31"
ROMFS_MIN_WRITE = 4096
# board32: the script's folder is sys.path[0]; a board's is '' (its working directory, the flash root).
# vfs.rom_ioctl(1/2) answer with this board's partition, as a board's do (mpremote and deploy's probe
# read its size); os.urandom is board32's own; host_urandom keeps programs written for the WASI VM working.
BOARD32_PREAMBLE = """\
import sys, os, vfs as _vfs
sys.path[0] = ''
host_urandom = os.urandom

class _RomPartition:
    def __len__(self):
        return %(size)d

class _BoardVfs:
    def rom_ioctl(self, op, *args):
        if op == 1:
            return 1 if %(size)d else 0
        if op == 2:
            return _RomPartition() if %(size)d and args[0] == 0 else -19
        return -22

    def __getattr__(self, name):
        return getattr(_vfs, name)

sys.modules['vfs'] = _BoardVfs()
del _BoardVfs
"""
BOARD32_NO_SOCKETS = """\
class _NoNetwork:
    def __getattr__(self, name):
        def refuse(*args, **kwargs):
            raise OSError(%r)
        return refuse

sys.modules['socket'] = sys.modules['usocket'] = _NoNetwork()
del _NoNetwork
"""
NO_NETWORK = "the virtual board has no network: start it with --network"
HOST_SOCKETS_ONLY = "the virtual board reaches the network only through host_call (transport.CallTransport)"
BOARD_PREAMBLE = """\
import os
os.chdir('/input')

class _BoardOS:
    def __init__(self, real):
        self._real = real

    def urandom(self, n):
        return host_urandom(n)

    def __getattr__(self, name):
        return getattr(self._real, name)

sys.modules['os'] = _BoardOS(os)
del _BoardOS
import os
"""
_QUICKACK = getattr(socket, "TCP_QUICKACK", None)

_ERRNO = {"ENOENT": 2, "EIO": 5, "EEXIST": 17, "ENOTDIR": 20, "EISDIR": 21, "EINVAL": 22, "ENOTEMPTY": 39,
          "EACCES": 13, "ENODEV": 19}


class BoardOSError(Exception):
    """A file operation failed; rendered as MicroPython's ``OSError: [Errno N] NAME``."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


def _traceback(text: str) -> bytes:
    return ("Traceback (most recent call last):\r\n  File \"<stdin>\", line 1, in <module>\r\n%s\r\n"
            % text).encode()


class Flash:
    """The board's filesystem: board paths (absolute or relative to ``/``) inside a host folder."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()

    def host(self, board_path: str) -> Path:
        norm = posixpath.normpath("/" + board_path)
        if "\x00" in norm:
            raise BoardOSError("EINVAL")
        target = (self.root / norm.lstrip("/")).resolve() if norm != "/" else self.root
        if target != self.root and self.root not in target.parents:
            raise BoardOSError("EACCES")
        return target

    def stat(self, board_path: str) -> tuple:
        try:
            st = self.host(board_path).stat()
        except FileNotFoundError:
            raise BoardOSError("ENOENT") from None
        mode = 0x4000 if stat.S_ISDIR(st.st_mode) else 0x8000
        size = 0 if mode == 0x4000 else st.st_size
        mtime = int(st.st_mtime)
        return (mode, 0, 0, 0, 0, 0, size, mtime, mtime, mtime)

    def ilistdir(self, board_path: str) -> list[tuple]:
        path = self.host(board_path)
        if not path.exists():
            raise BoardOSError("ENOENT")
        if not path.is_dir():
            raise BoardOSError("ENOTDIR")
        out = []
        for entry in sorted(path.iterdir()):
            if entry.is_dir():
                out.append((entry.name, 0x4000, 0, 0))
            else:
                out.append((entry.name, 0x8000, 0, entry.stat().st_size))
        return out

    def mkdir(self, board_path: str) -> None:
        path = self.host(board_path)
        if path.exists():
            raise BoardOSError("EEXIST")
        if not path.parent.is_dir():
            raise BoardOSError("ENOENT")
        path.mkdir()

    def rmdir(self, board_path: str) -> None:
        path = self.host(board_path)
        if not path.is_dir():
            raise BoardOSError("ENOENT" if not path.exists() else "ENOTDIR")
        if any(path.iterdir()):
            raise BoardOSError("ENOTEMPTY")
        path.rmdir()

    def remove(self, board_path: str) -> None:
        path = self.host(board_path)
        if path.is_dir():
            raise BoardOSError("EISDIR")
        if not path.exists():
            raise BoardOSError("ENOENT")
        path.unlink()

    def open(self, board_path: str, mode: str):
        path = self.host(board_path)
        if path.is_dir():
            raise BoardOSError("EISDIR")
        if "r" in mode and not path.exists():
            raise BoardOSError("ENOENT")
        if not path.parent.is_dir():
            raise BoardOSError("ENOENT")
        return open(path, mode + ("b" if "b" not in mode else ""))


def _path_arg(text: str) -> str:
    value = ast.literal_eval(text)
    if not isinstance(value, str):
        raise ValueError("path is not a string")
    return value


_P = r"('(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\")"  # one Python string literal
FS_SNIPPETS = [
    ("listdir", re.compile(r"import os\nfor f in os\.ilistdir\(%s?\):\n print\(repr\(f\), end=','\)" % _P)),
    ("noop", re.compile(r"import os|import hashlib|import vfs|from binascii import a2b_base64|from io import BytesIO"
                        r"|import vfs\ntry:\n vfs\.umount\('/rom'\)\nexcept:\n pass")),
    ("no_deflate", re.compile(r"from deflate import DeflateIO,RAW")),
    ("true", re.compile(r"print\(repr\((?:hasattr\(vfs,'rom_ioctl'\)|hasattr\(bytes,'fromhex'\))\)\)")),
    ("false", re.compile(r"print\(repr\(hasattr\(dev,'ioctl'\)\)\)")),
    ("rom_dev", re.compile(r"dev=vfs\.rom_ioctl\(2,(\d+)\)")),
    ("rom_missing", re.compile(r"print\(repr\(isinstance\(dev,int\) and dev<0\)\)")),
    ("rom_len", re.compile(r"print\(repr\(len\(dev\)\)\)")),
    ("rom_head", re.compile(r"print\(repr\(bytes\(memoryview\(dev\)\[:(\d+)\]\)\)\)")),
    ("rom_ioctl", re.compile(r"print\(repr\(vfs\.rom_ioctl\((\d+)((?:,\d+)*)\)\)\)")),
    ("rom_buf", re.compile(r"buf=a2b_base64\((b'[A-Za-z0-9+/=\\n]*')\)")),
    ("rom_write", re.compile(r"vfs\.rom_ioctl\(4,(\d+),(\d+),buf\)")),
    ("stat", re.compile(r"print\(repr\(tuple\(os\.stat\(%s\)\)\)\)" % _P)),
    ("cat", re.compile(r"with open\(%s\) as f:\n while 1:\n  b=f\.read\((\d+)\)\n  if not b:break\n"
                       r"  print\(b,end=''\)" % _P)),
    ("open_read", re.compile(r"f=open\(%s,'rb'\)\nr=f\.read" % _P)),
    ("read", re.compile(r"print\(repr\(r\((\d+)\)\)\)")),
    ("open_write", re.compile(r"f=open\(%s,'wb'\)\nw=f\.write" % _P)),
    ("write", re.compile(r"w\((b'(?:[^'\\]|\\.)*'|b\"(?:[^\"\\]|\\.)*\")\)", re.S)),
    ("close", re.compile(r"f\.close\(\)")),
    ("touch", re.compile(r"f=open\(%s,'a'\)\nf\.close\(\)" % _P)),
    ("mkdir", re.compile(r"import os\nos\.mkdir\(%s\)" % _P)),
    ("rmdir", re.compile(r"import os\nos\.rmdir\(%s\)" % _P)),
    ("remove", re.compile(r"import os\nos\.remove\(%s\)" % _P)),
    ("hash_new", re.compile(r"import hashlib\nh = hashlib\.(sha256|sha1|md5)\(\)")),
    ("hash_file", re.compile(r"buf = memoryview\(bytearray\((\d+)\)\)\nwith open\(%s, 'rb'\) as f:\n"
                             r" while True:\n  n = f\.readinto\(buf\)\n  if n == 0:\n   break\n"
                             r"  h\.update\(buf if n == \d+ else buf\[:n\]\)\n?" % _P)),
    ("digest", re.compile(r"print\(repr\(h\.digest\(\)\)\)")),
]


class Session:
    """One connection: the raw REPL state machine and the file handles mpremote keeps between execs."""

    def __init__(self, board: "VirtualBoard", conn: socket.socket) -> None:
        self.board = board
        self.conn = conn
        self.file = None
        self.hash = None
        self.rom_buf = b""
        self.command_due: float | None = None      # monotonic deadline of the command whose first byte came

    def send(self, data: bytes) -> None:
        self.conn.settimeout(self.board.idle_s)     # a client that reads nothing is dropped, not waited for
        self.conn.sendall(data)

    def recv(self) -> bytes:
        """Receive, acknowledging at once: mpremote's small writes would otherwise wait out delayed ACKs.
        Raises TimeoutError after ``idle_s`` without a byte, or when the command begun is not complete
        ``command_s`` after its first byte."""
        now = time.monotonic()
        wait = self.board.idle_s if self.command_due is None else min(self.board.idle_s, self.command_due - now)
        if wait <= 0:
            raise TimeoutError("command not complete within %g s" % self.board.command_s)
        self.conn.settimeout(wait)
        data = self.conn.recv(65536)
        if data and self.command_due is None:
            self.command_due = now + self.board.command_s
        if _QUICKACK is not None:
            self.conn.setsockopt(socket.IPPROTO_TCP, _QUICKACK, 1)
        return data

    def complete(self) -> None:
        """A command is complete: the next byte starts the next one's time limit."""
        self.command_due = None

    def reset(self) -> None:
        if self.file is not None:
            self.file.close()
        self.file = None
        self.hash = None

    def serve(self) -> None:
        raw = False
        buf = bytearray()
        pending = bytearray()
        try:
            while True:
                if not pending:
                    chunk = self.recv()
                    if not chunk:
                        return
                    pending.extend(chunk)
                c = pending.pop(0)
                if c == 0x01:
                    raw = True
                    buf.clear()
                    self.send(RAW_BANNER + b">")
                elif c == 0x02:
                    raw = False
                    buf.clear()
                    self.send(b"\r\n" + FRIENDLY_BANNER)
                elif c == 0x03:
                    buf.clear()
                elif not raw:
                    continue
                elif c == 0x05 and not buf:
                    pending = self._raw_paste(pending)
                    if pending is None:
                        return
                elif c == 0x04:
                    if not buf:
                        self.reset()
                        self.send(SOFT_REBOOT + RAW_BANNER + b">")
                    else:
                        self.send(b"OK")
                        self._execute_and_reply(bytes(buf))
                        buf.clear()
                else:
                    if len(buf) >= MAX_PROGRAM_BYTES:
                        return
                    buf.append(c)
                    continue
                self.complete()
        except OSError:                             # closed, reset, or a time limit (TimeoutError)
            return
        finally:
            self.reset()

    def _recv_into(self, pending: bytearray, n: int) -> bool:
        while len(pending) < n:
            chunk = self.recv()
            if not chunk:
                return False
            pending.extend(chunk)
        return True

    def _raw_paste(self, pending: bytearray) -> bytearray | None:
        """After ``\\x05``: expect ``A\\x01``, receive the program under flow control, run it."""
        if not self._recv_into(pending, 2):
            return None
        if bytes(pending[:2]) != b"A\x01":
            return pending
        del pending[:2]
        self.send(b"R\x01" + PASTE_WINDOW.to_bytes(2, "little"))
        program = bytearray()
        since_ack = 0
        while True:
            if not pending and not self._recv_into(pending, 1):
                return None
            c = pending.pop(0)
            if c == 0x04:
                break
            if len(program) >= MAX_PROGRAM_BYTES:
                return None
            program.append(c)
            since_ack += 1
            if since_ack == PASTE_WINDOW:
                since_ack = 0
                self.send(b"\x01")
        self.send(b"\x04")
        self._execute_and_reply(bytes(program))
        return pending

    def _execute_and_reply(self, program: bytes) -> None:
        out, err = self.execute(program.decode("utf-8", "replace"))
        self.send(out.replace(b"\x04", b"") + b"\x04" + err.replace(b"\x04", b"") + b"\x04>")

    def execute(self, code: str) -> tuple[bytes, bytes]:
        """Run one program; return (stdout, traceback)."""
        for kind, pattern in FS_SNIPPETS:
            match = pattern.fullmatch(code)
            if match:
                try:
                    return self._file_op(kind, match.groups()), b""
                except BoardOSError as exc:
                    return b"", _traceback("OSError: [Errno %d] %s" % (_ERRNO[exc.name], exc.name))
                except ImportError as exc:
                    return b"", _traceback("ImportError: %s" % exc)
                except (ValueError, SyntaxError) as exc:
                    return b"", _traceback("ValueError: %s" % exc)
                except OSError as exc:
                    return b"", _traceback("OSError: [Errno 5] EIO (%s)" % exc.strerror)
        return self.board.run_program(code)

    def _file_op(self, kind: str, args: tuple) -> bytes:
        flash = self.board.flash
        if kind == "noop":
            return b""
        if kind.startswith("rom") or kind in ("true", "false", "no_deflate"):
            return self._rom_op(kind, args)
        if kind == "listdir":
            entries = flash.ilistdir(_path_arg(args[0]) if args[0] else "")
            return "".join(repr(e) + "," for e in entries).encode()
        if kind == "stat":
            return repr(flash.stat(_path_arg(args[0]))).encode() + b"\r\n"
        if kind == "cat":
            with flash.open(_path_arg(args[0]), "r") as f:
                return f.read()
        if kind == "open_read" or kind == "open_write":
            self.reset()
            self.file = flash.open(_path_arg(args[0]), "rb" if kind == "open_read" else "wb")
            return b""
        if kind in ("read", "write", "close"):
            if self.file is None:
                raise ValueError("no open file")
            if kind == "read":
                return repr(self.file.read(int(args[0]))).encode() + b"\r\n"
            if kind == "write":
                data = ast.literal_eval(args[0])
                if not isinstance(data, bytes):
                    raise ValueError("write takes bytes")
                self.file.write(data)
                return b""
            self.reset()
            return b""
        if kind == "touch":
            flash.open(_path_arg(args[0]), "ab").close()
            return b""
        if kind in ("mkdir", "rmdir", "remove"):
            getattr(flash, kind)(_path_arg(args[0]))
            return b""
        if kind == "hash_new":
            self.hash = hashlib.new(args[0])
            return b""
        if kind == "hash_file":
            if self.hash is None:
                raise ValueError("no hash object")
            with flash.open(_path_arg(args[1]), "rb") as f:
                self.hash.update(f.read())
            return b""
        if kind == "digest":
            if self.hash is None:
                raise ValueError("no hash object")
            return repr(self.hash.digest()).encode() + b"\r\n"
        raise ValueError(kind)

    def _rom_op(self, kind: str, args: tuple) -> bytes:
        """mpremote's ``romfs query`` / ``romfs deploy`` snippets against the board's ROMFS partition."""
        rom = self.board.romfs
        if kind in ("true", "false"):
            return repr(kind == "true").encode() + b"\r\n"
        if kind == "no_deflate":
            raise ModuleNotFoundError("no module named 'deflate'")
        if kind == "rom_dev":
            if int(args[0]) != 0 or rom.size == 0:
                raise BoardOSError("ENODEV")
            return b""
        if kind == "rom_missing":
            return repr(rom.size == 0).encode() + b"\r\n"
        if kind == "rom_len":
            return repr(rom.size).encode() + b"\r\n"
        if kind == "rom_head":
            return repr(rom.read()[:int(args[0])].ljust(int(args[0]), b"\xff")).encode() + b"\r\n"
        if kind == "rom_buf":
            self.rom_buf = binascii.a2b_base64(ast.literal_eval(args[0]))
            return b""
        if kind == "rom_write":
            rom.write(int(args[1]), self.rom_buf)
            return b""
        op, rest = int(args[0]), [int(a) for a in args[1].split(",") if a]
        if op == 1:
            return repr(1 if rom.size else 0).encode() + b"\r\n"
        if op == 6:
            return repr(rom.size).encode() + b"\r\n"
        if op == 3:
            rom.erase()
            return repr(ROMFS_MIN_WRITE).encode() + b"\r\n"
        if op == 5:
            rom.finish()
            return b"0\r\n"
        raise ValueError("rom_ioctl %d" % op)


def _split_board32_output(proc: subprocess.CompletedProcess, script: bytes, preamble_lines: int) -> tuple[bytes, bytes]:
    """(output, traceback) of a board32 run: the unix port prints an uncaught exception's traceback on
    stdout, last; its line numbers are made relative to the program, as a board's raw REPL gives them."""
    out = proc.stdout
    if proc.returncode == 0:
        return out, b""
    at = out.rfind(b"Traceback (most recent call last):")
    if at < 0:
        return out, _traceback("RuntimeError: board32 exited with code %d %s" % (
            proc.returncode, proc.stderr.decode("utf-8", "replace").strip()[-300:]))

    def line(match: re.Match) -> bytes:
        return b'File "<stdin>", line %d' % max(1, int(match.group(1)) - preamble_lines)

    err = re.sub(rb'File "' + re.escape(script) + rb'", line (\d+)', line, out[at:])
    return out[:at], err.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


class RomPartition:
    """The board's ROMFS partition: ``size`` bytes (0: none), its contents in a host file."""

    def __init__(self, path: Path, size: int) -> None:
        self.path = path
        self.size = size
        self.pending: bytearray | None = None
        self.end = 0

    def read(self) -> bytes:
        return self.path.read_bytes() if self.path.is_file() else b""

    def image(self) -> Path | None:
        """The host file when it holds a ROMFS image (what a board mounts at /rom)."""
        return self.path if self.read()[:3] == ROMFS_MAGIC else None

    def erase(self) -> None:
        self.path.unlink(missing_ok=True)
        self.pending = bytearray()
        self.end = 0

    def write(self, offset: int, data: bytes) -> None:
        if self.pending is None:
            raise ValueError("partition not prepared")
        if offset + len(data) > self.size:
            raise BoardOSError("EINVAL")
        if len(self.pending) < offset + len(data):
            self.pending.extend(bytes(offset + len(data) - len(self.pending)))
        self.pending[offset:offset + len(data)] = data
        self.end = max(self.end, offset + len(data))

    def finish(self) -> None:
        if self.pending is not None:
            self.store(bytes(self.pending[:self.end]))

    def store(self, image: bytes) -> None:
        """Write ``image`` as the partition's contents; ValueError when it does not fit."""
        if len(image) > self.size:
            raise ValueError("a %d-byte image does not fit the %d-byte ROMFS partition" % (len(image), self.size))
        self.path.write_bytes(image)
        self.pending = None


class VirtualBoard:
    """A raw-REPL server on 127.0.0.1 backed by a flash folder; one client at a time, like a serial port.

    Its port is bounded as our other ports are: ``max_connections`` connections at once (one served, the
    rest waiting their turn unread; more are closed at once), a served connection is closed after
    ``idle_s`` without a byte or when a command is not complete ``command_s`` after its first byte, a
    program longer than ``MAX_PROGRAM_BYTES`` closes it, and a client that reads no output is dropped
    after ``idle_s``. So a client that holds the connection open, or sends part of a program and stops,
    keeps the board from others for at most that long. Tested by ``python3 -m ledgerlink.tools.chaos
    --ports`` (tests/chaos/test_port_attack.py)."""

    def __init__(self, flash_dir: Path | None = None, port: int = 0, heap_bytes: int = DEFAULT_HEAP,
                 fuel: int = DEFAULT_FUEL, exec_timeout: float = DEFAULT_EXEC_TIMEOUT,
                 preload_library: bool = False, network_allow: list[str] | tuple[str, ...] | None = None,
                 runtime: str = "board32", romfs_bytes: int | None = None, layout: str = "files",
                 idle_s: float = IDLE_S, command_s: float = COMMAND_S, max_connections: int = MAX_CONNECTIONS) -> None:
        """``network_allow``: addresses or networks board code may connect to through the host (None: no
        network); ValueError when an entry is not an address or network, or ``runtime`` / ``layout`` is
        unknown; ``board_runtime.BoardError`` when board32 is missing. ``romfs_bytes``: the ROMFS
        partition (0: none; default: the virtual profile's on board32, none on the WASI build, which
        cannot mount an image). ``preload_library`` stages the library and client in ``layout``."""
        self.idle_s = idle_s
        self.command_s = command_s
        self.max_connections = max_connections
        self.refused = 0                            # connections closed at once: the cap was reached
        self._connections = 0                       # served and waiting
        self._count_lock = threading.Lock()
        self._waiting: queue.Queue = queue.Queue()
        if network_allow is not None:
            parse_allow(network_allow)
        if runtime not in RUNTIMES:
            raise ValueError("runtime must be one of %s" % ", ".join(RUNTIMES))
        if layout not in deploy.LAYOUTS:
            raise ValueError("layout must be one of %s" % ", ".join(deploy.LAYOUTS))
        self.runtime = runtime
        self.exe = board32() if runtime == "board32" else None
        self.network_allow = None if network_allow is None else list(network_allow)
        self._own_flash = flash_dir is None
        root = Path(flash_dir) if flash_dir is not None else Path(tempfile.mkdtemp(prefix="ledgerlink-board-"))
        root.mkdir(parents=True, exist_ok=True)
        self.flash = Flash(root)
        if romfs_bytes is None:
            romfs_bytes = deploy.load_profile(DEFAULT_BOARD)["memory"].get("romfs_bytes", 0) if self.exe else 0
        self.romfs = RomPartition(self.flash.root.with_name(self.flash.root.name + ".romfs"), romfs_bytes)
        if preload_library:
            self.preload(layout)
        self.heap_bytes = heap_bytes
        self.fuel = fuel
        self.exec_timeout = exec_timeout
        self.execs = 0
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", port))
        self._sock.listen(16)
        self.port = self._sock.getsockname()[1]
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()

    @property
    def url(self) -> str:
        return "socket://127.0.0.1:%d" % self.port

    def preload(self, layout: str) -> None:
        """Put the compiled library and client on the board: as an image in the ROMFS partition, or in /lib."""
        files = deploy.library_sources()
        if layout == "romfs":
            if self.romfs.size == 0:
                raise ValueError("this virtual board has no ROMFS partition: preload with layout files")
            with tempfile.TemporaryDirectory(prefix="ledgerlink-preload-") as tmp:
                image = Path(tmp) / "lib.romfs"
                deploy.build_image(files, image)
                self.romfs.store(image.read_bytes())
        else:
            deploy.compile_files(files, self.flash.root)

    def run_program(self, code: str) -> tuple[bytes, bytes]:
        """Run ``code`` in a fresh MicroPython with the flash (and ROMFS image) in place; (stdout, traceback)."""
        if self.runtime == "board32":
            return self._run_board32(code)
        self.execs += 1
        program = PREAMBLE % os.urandom(32).hex() + BOARD_PREAMBLE
        bridge = None
        if self.network_allow is not None:
            bridge = SocketBridge(self.network_allow)
            program += HOST_PREAMBLE
        program += GUARD % (code,)
        try:
            result = run_wasm(program, fuel=self.fuel, heap_bytes=self.heap_bytes,
                              readonly_dir=self.flash.root, timeout=self.exec_timeout,
                              host_functions=bridge.functions() if bridge is not None else None)
        except VMError as exc:
            return b"", _traceback("RuntimeError: %s" % str(exc).replace("\n", " ")[:500])
        finally:
            if bridge is not None:
                bridge.close()
        out, sep, err = result.stdout.partition(ERROR_MARK)
        return out.encode(), err.lstrip("\n").encode() if sep else b""

    def _run_board32(self, code: str) -> tuple[bytes, bytes]:
        self.execs += 1
        program = BOARD32_PREAMBLE % {"size": self.romfs.size}
        bridge = link = None
        if self.network_allow is not None:
            bridge = SocketBridge(self.network_allow)
            link = HostLink(bridge.functions())
            program += BOARD32_HOST_PREAMBLE % link.port
        program += BOARD32_NO_SOCKETS % (NO_NETWORK if bridge is None else HOST_SOCKETS_ONLY)
        env = dict(os.environ, MICROPYPATH=".frozen:%s" % (self.flash.root / "lib"))
        env.pop("MICROPY_ROMFS", None)
        image = self.romfs.image()
        if image is not None:
            env["MICROPY_ROMFS"] = str(image)
        with tempfile.TemporaryDirectory(prefix="ledgerlink-exec-") as tmp:
            script = Path(tmp) / "stdin.py"
            script.write_text(program + code + "\n")
            try:
                proc = subprocess.run([str(self.exe), "-X", "heapsize=%d" % self.heap_bytes, str(script)],
                                      cwd=self.flash.root, env=env, capture_output=True, timeout=self.exec_timeout)
            except subprocess.TimeoutExpired:
                return b"", _traceback("RuntimeError: the program ran longer than %.0f s" % self.exec_timeout)
            finally:
                if link is not None:
                    link.close()
                if bridge is not None:
                    bridge.close()
        return _split_board32_output(proc, str(script).encode(), program.count("\n"))

    def serve_forever(self) -> None:
        """Serve the connections one after another, in the order they came, until ``stop``."""
        threading.Thread(target=self._accept_loop, name="virtual-board-accept", daemon=True).start()
        while not self._stopping.is_set():
            conn = self._waiting.get()
            if conn is None:
                return
            try:
                with conn:
                    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    if _QUICKACK is not None:
                        conn.setsockopt(socket.IPPROTO_TCP, _QUICKACK, 1)
                    Session(self, conn).serve()
            except OSError:
                pass
            finally:
                with self._count_lock:
                    self._connections -= 1

    def _accept_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError:
                self._waiting.put(None)
                return
            with self._count_lock:
                full = self._connections >= self.max_connections
                if not full:
                    self._connections += 1
            if full:
                self.refused += 1
                conn.close()
            else:
                self._waiting.put(conn)

    def start(self) -> "VirtualBoard":
        self._thread = threading.Thread(target=self.serve_forever, name="virtual-board", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._sock.close()
        self._waiting.put(None)
        if self._thread is not None:
            self._thread.join(timeout=5)
        while True:
            try:
                conn = self._waiting.get_nowait()
            except queue.Empty:
                break
            if conn is not None:
                conn.close()
        if self._own_flash:
            shutil.rmtree(self.flash.root, ignore_errors=True)
            self.romfs.path.unlink(missing_ok=True)

    def __enter__(self) -> "VirtualBoard":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ledgerlink virtual-board",
                                     description="A MicroPython raw REPL on 127.0.0.1 for mpremote socket:// URLs.")
    parser.add_argument("--port", type=int, default=2323,
                        help="TCP port on 127.0.0.1 (default 2323): mpremote connect socket://127.0.0.1:PORT")
    parser.add_argument("--board", default=DEFAULT_BOARD,
                        help="board profile whose heap and ROMFS partition the board has: %s (default %s)"
                             % (", ".join(deploy.board_names()), DEFAULT_BOARD))
    parser.add_argument("--runtime", choices=RUNTIMES, default="board32",
                        help="board32 (collector on, the profile's heap; default) or wasi (collection off)")
    parser.add_argument("--layout", choices=deploy.LAYOUTS,
                        help="how --preload puts the library on the board (default: the profile's deploy layout)")
    parser.add_argument("--flash", type=Path, help="host folder holding the board's files (default: a temp folder)")
    parser.add_argument("--preload", action="store_true", help="put the compiled library on the board first")
    parser.add_argument("--heap", type=int, help="MicroPython heap per exec, bytes (default: the profile's "
                                                 "heap_bytes on board32, %d on wasi)" % DEFAULT_HEAP)
    parser.add_argument("--network", action="store_true",
                        help="let board code open TCP connections through this host (host_call sockets)")
    parser.add_argument("--network-allow", action="append", metavar="ADDR",
                        help="address or network board code may connect to (repeatable; implies --network; "
                             "default 127.0.0.1)")
    parser.add_argument("--idle-timeout", type=float, default=IDLE_S,
                        help="close a connection silent this many seconds (default %g)" % IDLE_S)
    parser.add_argument("--command-timeout", type=float, default=COMMAND_S,
                        help="close a connection whose command is not complete this many seconds after its first "
                             "byte (default %g)" % COMMAND_S)
    parser.add_argument("--max-connections", type=int, default=MAX_CONNECTIONS,
                        help="connections at once, one served and the others waiting (default %d)" % MAX_CONNECTIONS)
    args = parser.parse_args(argv)
    allow = None
    if args.network or args.network_allow:
        allow = args.network_allow or list(DEFAULT_NETWORK_ALLOW)
    try:
        parse_allow(allow or [])
    except ValueError as exc:
        print("virtual board: --network-allow: %s" % exc, file=sys.stderr)
        return 2
    try:
        profile = deploy.load_profile(args.board)
    except deploy.DeployError as exc:
        print("virtual board: --board: %s" % exc, file=sys.stderr)
        return 2
    heap = args.heap or (profile["memory"]["heap_bytes"] if args.runtime == "board32" else DEFAULT_HEAP)
    romfs_bytes = profile["memory"].get("romfs_bytes", 0) if args.runtime == "board32" else 0
    layout = args.layout or deploy.default_layout(profile)
    try:
        board = VirtualBoard(args.flash, port=args.port, heap_bytes=heap, preload_library=args.preload,
                             network_allow=allow, runtime=args.runtime, romfs_bytes=romfs_bytes, layout=layout,
                             idle_s=args.idle_timeout, command_s=args.command_timeout,
                             max_connections=args.max_connections)
    except (ValueError, VMError, deploy.DeployError) as exc:
        print("virtual board: %s" % exc, file=sys.stderr)
        return 2
    except OSError as exc:
        print("virtual board: cannot listen on 127.0.0.1:%d (%s); pick another --port" % (args.port, exc.strerror),
              file=sys.stderr)
        return 2
    network = "network to %s" % ", ".join(allow) if allow is not None else "no network"
    rom = "ROMFS partition %d bytes" % romfs_bytes if romfs_bytes else "no ROMFS partition"
    signal.signal(signal.SIGTERM, signal.default_int_handler)    # stop as on Ctrl-C: the temp flash goes too
    try:
        print("virtual board on %s, flash %s, %s; %s, %s heap %d bytes, %s" % (
            board.url, board.flash.root, network, profile["name"], args.runtime, heap, rom), flush=True)
        board.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        board.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
