"""Virtual board: mpremote over socket:// runs code in MicroPython; deploy and the HIL checks run against it."""

import json
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from ledgerlink.tools import deploy, virtual_board
from ledgerlink.tools.socket_bridge import SocketBridge, UartBridge, parse_allow
from ledgerlink.tools.virtual_board import VirtualBoard

PROJECT_ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.micropython, pytest.mark.slow]


def mpremote(url: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mpremote", "connect", url, *args],
                          capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def board(tmp_path_factory):
    with VirtualBoard(tmp_path_factory.mktemp("flash")) as b:
        yield b


def test_exec_runs_in_micropython(board):
    result = mpremote(board.url, "exec", "import sys\nprint(1+1, sys.implementation.name)")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["2", "micropython"]
    failed = mpremote(board.url, "exec", "print('before')\n1/0")
    assert failed.returncode == 1
    assert "before" in failed.stdout and "ZeroDivisionError" in failed.stdout + failed.stderr


def test_file_commands_stay_inside_the_flash(board, tmp_path):
    src = tmp_path / "data.bin"
    src.write_bytes(bytes(range(256)) * 3 + b"'\"\\")
    result = mpremote(board.url, "fs", "mkdir", ":d", "+", "fs", "cp", str(src), ":d/data.bin", "+",
                      "fs", "ls", ":d", "+", "fs", "sha256sum", ":d/data.bin")
    assert result.returncode == 0, result.stderr
    assert (board.flash.root / "d" / "data.bin").read_bytes() == src.read_bytes()
    import hashlib
    assert hashlib.sha256(src.read_bytes()).hexdigest() in result.stdout
    assert "%d data.bin" % len(src.read_bytes()) in " ".join(result.stdout.split())
    again = mpremote(board.url, "fs", "mkdir", ":d")
    assert again.returncode == 1 and "File exists" in again.stderr
    escape = mpremote(board.url, "fs", "cp", str(src), ":../../escaped.bin")
    assert not (board.flash.root.parent.parent / "escaped.bin").exists()
    assert (board.flash.root / "escaped.bin").exists() or escape.returncode != 0
    assert mpremote(board.url, "fs", "rm", ":d/data.bin", "+", "fs", "rmdir", ":d").returncode == 0
    assert not (board.flash.root / "d").exists()


def test_deploy_then_hil_checks(board, tmp_path):
    broker = socket.socket()
    broker.bind(("127.0.0.1", 0))
    broker.listen(4)
    wifi = tmp_path / "wifi.json"
    wifi.write_text(json.dumps({"ssid": "lab", "password": "pw"}))
    config = json.loads((PROJECT_ROOT / "hardware" / "config.example.json").read_text())
    config.update(broker={"host": "127.0.0.1", "port": broker.getsockname()[1]}, wifi_file=str(wifi))
    path = tmp_path / "device.json"
    path.write_text(json.dumps(config))
    try:
        assert deploy.main(["--port", board.url, "--board", "virtual", "--config", str(path)]) == 0
    finally:
        broker.close()
    stored = json.loads((board.flash.root / "ledgerlink.json").read_text())
    assert stored["site"] == config["site"] and stored["board"] == "virtual"
    # the virtual profile has a ROMFS partition: the library went there as one image, the config to flash
    image = board.romfs.read()
    assert image[:3] == b"\xd2\xcd\x31" and b"p256.mpy" in image and b"bme280.mpy" in image
    assert not (board.flash.root / "lib").exists()

    out = tmp_path / "reports"
    result = subprocess.run([sys.executable, str(PROJECT_ROOT / "hardware" / "hil" / "run_checks.py"),
                             "--port", board.url, "--board", "virtual", "--out", str(out),
                             "--cases", "2", "--repeat", "2"], capture_output=True, text=True, timeout=300)
    # every check passes; the session step cannot run without a provisioned key and says so
    assert result.returncode == 0, result.stderr
    report = json.loads((out / "virtual.json").read_text())
    assert report["passed"] and report["device"]["wasi"] is False      # board32, collector on
    assert report["session"]["status"] == "skipped"
    assert report["session"]["reason"] == ("needs a provisioned board: no ledgerlink.key on it "
                                           "(run ledgerlink provision)")
    assert not report["vectors"]["ecdsa"]["failed"] and not report["vectors"]["aes_ccm"]["failed"]
    assert report["vectors"]["ecdsa"]["total"] == 4 and report["vectors"]["aes_ccm"]["total"] == 4
    for op in ("keygen", "sign", "verify", "ecqv_issue", "ecqv_reconstruct", "ecqv_public_key"):
        assert report["timings"][op]["n"] == 2 and report["timings"][op]["min_ms"] >= 0
    assert 0 < report["heap"]["lowest_during_ecqv"] < report["heap"]["free_at_start"]
    peaks = report["heap"]["peak_per_step"]
    assert set(peaks) == {"info", "ecdsa_vectors", "ccm_vectors", "ecdsa_timings", "ecqv_timings"}
    assert all(p["measure"] == "peak_live" and 0 < p["bytes"] < board.heap_bytes for p in peaks.values())
    assert peaks["ecqv_timings"]["bytes"] > peaks["info"]["bytes"]
    table = (out / "virtual.txt").read_text()
    assert "result: PASS" in table and "ecqv_reconstruct" in table and "run ledgerlink provision" in table
    assert "peak heap per step" in table and "gc.peak_live (highest live heap)" in table



def test_hil_reports_a_missing_library_and_writes_nothing(tmp_path):
    with VirtualBoard(tmp_path / "empty") as empty:
        result = subprocess.run([sys.executable, str(PROJECT_ROOT / "hardware" / "hil" / "run_checks.py"),
                                 "--port", empty.url, "--board", "empty", "--out", str(tmp_path / "r")],
                                capture_output=True, text=True, timeout=120)
    assert result.returncode == 3 and "deploy first" in result.stderr
    assert not (tmp_path / "r").exists()


def test_board_files_persist_between_execs_and_urandom_works(board):
    write = ("import os\nf = open('state.bin', 'wb')\nf.write(os.urandom(32))\nf.close()\n"
             "os.rename('state.bin', 'kept.bin')\nfrom os import urandom\nprint(urandom(16).hex())")
    first = mpremote(board.url, "exec", write)
    assert first.returncode == 0, first.stdout + first.stderr
    kept = (board.flash.root / "kept.bin").read_bytes()
    assert len(kept) == 32 and not (board.flash.root / "state.bin").exists()
    read = "import os\nprint(open('kept.bin', 'rb').read().hex(), os.urandom(16).hex())\nos.remove('kept.bin')"
    second = mpremote(board.url, "exec", read)
    assert second.returncode == 0, second.stdout + second.stderr
    seen, fresh = second.stdout.split()
    assert bytes.fromhex(seen) == kept
    assert len({first.stdout.strip(), fresh, kept.hex()[:32]}) == 3
    assert not (board.flash.root / "kept.bin").exists()


def echo_server() -> tuple[socket.socket, int]:
    """A one-connection server on 127.0.0.1 that answers what it receives in upper case."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)

    def serve() -> None:
        conn, _ = srv.accept()
        with conn:
            conn.sendall(conn.recv(64).upper())

    threading.Thread(target=serve, daemon=True).start()
    return srv, srv.getsockname()[1]


NET_PROGRAM = """
sid = host_call('sock_connect', 'localhost', %d)
host_call('sock_send', sid, b'ping'.hex())
print('echo', bytes.fromhex(host_call('sock_recv', sid, 64, 5000)))
for host in ('192.0.2.7', '10.0.0.1'):
    try:
        host_call('sock_connect', host, 1883)
        print('connected to', host)
    except OSError as exc:
        print('refused', exc)
"""


def test_network_is_opt_in_and_confined_to_the_allow_list(tmp_path):
    srv, port = echo_server()
    try:
        with VirtualBoard(tmp_path / "net", network_allow=["127.0.0.1"]) as net:
            result = mpremote(net.url, "exec", NET_PROGRAM % port)
    finally:
        srv.close()
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "echo b'PING'"
    assert lines[1] == ("refused PermissionError: 192.0.2.7:1883 (192.0.2.7) is not in the virtual board's "
                        "network allow list (127.0.0.1/32)")
    assert lines[2].startswith("refused PermissionError: 10.0.0.1:1883") and len(lines) == 3
    # without network board code has no host_call, and the socket module is absent as on the WASI build
    with VirtualBoard(tmp_path / "plain") as plain:
        result = mpremote(plain.url, "exec", "print('host_call' in globals())")
    assert result.returncode == 0 and result.stdout.split() == ["False"]


def test_socket_bridge_ids_limits_and_allow_entries():
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen(8)
        port = srv.getsockname()[1]
        bridge = SocketBridge(["127.0.0.0/8"], max_sockets=2)
        try:
            a = bridge.sock_connect("127.0.0.1", port)
            b = bridge.sock_connect("127.0.0.1", port)
            with pytest.raises(OSError, match="too many open sockets"):
                bridge.sock_connect("127.0.0.1", port)
            bridge.sock_close(a)
            c = bridge.sock_connect("127.0.0.1", port)
            assert len({a, b, c}) == 3 and set(bridge.socks) == {b, c}
            with pytest.raises(OSError, match="no open socket"):
                bridge.sock_send(a, "00")
            assert bridge.sock_recv(b, 10, 1) == ""
            bridge.sock_close(c)
            with pytest.raises(PermissionError):
                bridge.sock_connect("192.0.2.1", port)
            assert bridge.denied == 1 and bridge.attempts == 4
        finally:
            bridge.close()
    assert SocketBridge().allowed("203.0.113.9") and not SocketBridge(["::1"]).allowed("127.0.0.1")
    assert [str(n) for n in parse_allow(["10.1.2.3/8", "::1"])] == ["10.0.0.0/8", "::1/128"]
    with pytest.raises(ValueError, match="not an IP address or network"):
        parse_allow(["broker.local"])


def test_cli_refuses_a_bad_allow_entry(capsys):
    assert virtual_board.main(["--port", "0", "--network-allow", "not-an-address"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--network-allow" in err[0] and "not an IP address" in err[0]


def test_deploy_refuses_a_board_without_enough_memory(tmp_path, capsys):
    config = json.loads((PROJECT_ROOT / "hardware" / "config.example.json").read_text())
    config.update(wifi_file=str(tmp_path / "none.json"))
    path = tmp_path / "device.json"
    path.write_text(json.dumps(config))
    with VirtualBoard(tmp_path / "small", heap_bytes=48 * 1024) as small:
        code = deploy.main(["--port", small.url, "--board", "virtual", "--config", str(path),
                            "--skip-broker-check"])
        err = capsys.readouterr().err
        assert code == 8, err
        need = deploy.heap_needed(deploy.load_profile("virtual"), "romfs")     # the virtual profile's layout
        assert err.count("\n") == 1 and "bytes of free heap, ledgerlink needs at least %d" % need in err
        assert list((tmp_path / "small").iterdir()) == []            # nothing copied


IMPORT_CLIENT = "import gc, ledgerlink_client.device\ngc.collect()\nprint('kept', gc.mem_alloc())"


def test_board32_heap_makes_the_layout_matter(tmp_path):
    """At a 40 KB heap the client imports from the ROMFS image and runs out of memory as .mpy files, as on
    a board: bytecode from files is copied to the heap, from ROMFS it runs in place."""
    heap = 40 * 1024
    with VirtualBoard(tmp_path / "files", heap_bytes=heap, preload_library=True, layout="files") as files:
        result = mpremote(files.url, "exec", IMPORT_CLIENT)
    assert result.returncode == 1 and "MemoryError" in result.stdout + result.stderr, result.stdout
    with VirtualBoard(tmp_path / "romfs", heap_bytes=heap, preload_library=True, layout="romfs") as rom:
        result = mpremote(rom.url, "exec", IMPORT_CLIENT)
        assert result.returncode == 0, result.stdout + result.stderr
        assert 0 < int(result.stdout.split()[-1]) < heap
        assert not (rom.flash.root / "lib").exists() and rom.romfs.image() is not None


def test_cli_takes_the_profiles_heap(tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "ledgerlink.tools.cli", "virtual-board", "--port", "0",
                             "--board", "esp32", "--flash", str(tmp_path / "flash")],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        banner = proc.stdout.readline()
    finally:
        proc.terminate()
        proc.wait(10)
        proc.stdout.close()
    assert "esp32, board32 heap 110000 bytes, no ROMFS partition" in banner, banner
    assert virtual_board.main(["--port", "0", "--board", "z80"]) == 2


def test_uart_bridge_opens_a_connection_per_exchange_and_keeps_to_the_allow_list():
    """The serial-modem relay of the QEMU board's UART1: a connection to the target opens when the board
    sends, closes with the target, and the next bytes open a new one."""
    def upper_once(srv: socket.socket) -> None:
        for _ in range(2):
            conn, _ = srv.accept()
            with conn:
                conn.sendall(conn.recv(64).upper())

    with socket.create_server(("127.0.0.1", 0)) as uart, socket.create_server(("127.0.0.1", 0)) as target:
        threading.Thread(target=upper_once, args=(target,), daemon=True).start()
        with pytest.raises(PermissionError, match="not in the virtual board's network allow list"):
            UartBridge(uart.getsockname(), target.getsockname(), allow=["10.0.0.0/8"]).start()
        with UartBridge(uart.getsockname(), target.getsockname(), allow=["127.0.0.1"]) as bridge:
            line, _ = uart.accept()
            line.settimeout(5)
            with line:
                for word in (b"ping", b"again"):
                    line.sendall(word)
                    assert line.recv(64) == word.upper()
                    deadline = time.monotonic() + 5
                    while bridge.peer is not None and time.monotonic() < deadline:
                        time.sleep(0.01)
        assert bridge.connections == 2 and bridge.bytes_up == 9 and bridge.bytes_down == 9
