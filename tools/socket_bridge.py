"""Host side of the TCP sockets a MicroPython VM uses through host functions (``transport.CallTransport``).

The VM has no sockets of its own; ``SocketBridge.functions()`` gives it ``sock_connect(host, port) -> id``,
``sock_send(id, hex) -> n``, ``sock_recv(id, n, timeout_ms) -> hex`` ("" on timeout, None once the peer
closed) and ``sock_close(id)``, to pass as ``host_functions`` to ``micropython_vm.run_wasm`` or
``MicroPythonVM.run``. A failure raises, and the VM's ``host_call`` turns it into OSError with the text.

Protects against board code reaching hosts it should not (the virtual board lends the host's network):
with an ``allow`` list only addresses inside it are connected to; a host name is resolved once on the
host and the connection goes to the resolved address that was checked, so a name cannot resolve to
an allowed address for the check and another one for the connection. Open sockets are capped at
``max_sockets`` and reads at ``MAX_READ`` bytes. Tested in tests/hardware/test_virtual_board.py (allow
list, refusals as the board sees them) and by every VM test that talks to a broker.

``UartBridge`` is the same service for a board whose only line out is a serial port (the QEMU board's
UART1, a TCP server on the host): like a serial modem, it opens a TCP connection to one fixed server
(checked against the allow list) when the board starts sending, relays bytes both ways, and forgets
the connection once the server closes it, so the board's next bytes (its next MQTT CONNECT) open a
new one.
"""

from __future__ import annotations

import ipaddress
import select
import socket
import threading
from typing import Callable, Iterable

MAX_READ = 2048
DEFAULT_MAX_SOCKETS = 8
CONNECT_TIMEOUT_S = 5.0

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_allow(entries: Iterable[str]) -> list[Network]:
    """Addresses or networks (``127.0.0.1``, ``10.0.0.0/8``, ``::1``) as ip_network objects.

    Raises ValueError naming the first entry that is neither."""
    out = []
    for entry in entries:
        text = entry.strip()
        try:
            out.append(ipaddress.ip_network(text, strict=False))
        except ValueError:
            raise ValueError("%r is not an IP address or network (e.g. 127.0.0.1 or 192.168.1.0/24)" % entry) from None
    return out


class SocketBridge:
    """Sockets held on the host for one VM run.

    ``allow``: addresses or networks the VM may connect to (None: any). ``before_connect(attempt)`` runs
    before each connection attempt. Counters: ``attempts``, ``refused`` (connection refused by the
    peer), ``denied`` (outside ``allow``), ``bytes_up``.
    """

    def __init__(self, allow: Iterable[str] | None = None, max_sockets: int = DEFAULT_MAX_SOCKETS) -> None:
        self.allow = None if allow is None else parse_allow(allow)
        self.max_sockets = max_sockets
        self.socks: dict[int, socket.socket] = {}
        self.next_id = 1
        self.attempts = 0
        self.refused = 0
        self.denied = 0
        self.bytes_up = 0
        self.before_connect: Callable[[int], None] | None = None

    def allowed(self, address: str) -> bool:
        if self.allow is None:
            return True
        ip = ipaddress.ip_address(address.split("%", 1)[0])
        return any(ip in net for net in self.allow)

    def resolve(self, host: str, port: int) -> tuple:
        """The first resolved address of ``host:port`` inside the allow list; PermissionError if none is."""
        try:
            infos = socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM)
        except socket.gaierror as exc:
            raise OSError("cannot resolve %s: %s" % (host, exc.strerror)) from None
        for family, _, _, _, addr in infos:
            if self.allowed(addr[0]):
                return family, addr
        self.denied += 1
        shown = ", ".join(sorted({info[4][0] for info in infos}))
        allow = ", ".join(str(n) for n in self.allow or [])
        raise PermissionError("%s:%d (%s) is not in the virtual board's network allow list (%s)"
                              % (host, port, shown, allow))

    def sock_connect(self, host: str, port: int) -> int:
        if not isinstance(host, str) or not isinstance(port, int) or not 0 < port < 65536:
            raise ValueError("sock_connect takes a host name and a port 1..65535")
        if len(self.socks) >= self.max_sockets:
            raise OSError("too many open sockets (%d)" % self.max_sockets)
        self.attempts += 1
        if self.before_connect is not None:
            self.before_connect(self.attempts)
        family, addr = self.resolve(host, port)
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.settimeout(CONNECT_TIMEOUT_S)
        try:
            sock.connect(addr)
        except ConnectionRefusedError:
            sock.close()
            self.refused += 1
            raise
        except OSError:
            sock.close()
            raise
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sid = self.next_id
        self.next_id += 1
        self.socks[sid] = sock
        return sid

    def _sock(self, sid: int) -> socket.socket:
        sock = self.socks.get(sid)
        if sock is None:
            raise OSError("no open socket %r" % (sid,))
        return sock

    def sock_send(self, sid: int, data: str) -> int:
        raw = bytes.fromhex(data)
        self._sock(sid).sendall(raw)
        self.bytes_up += len(raw)
        return len(raw)

    def sock_recv(self, sid: int, n: int, timeout_ms: int) -> str | None:
        sock = self._sock(sid)
        sock.settimeout(max(int(timeout_ms), 1) / 1000)
        try:
            data = sock.recv(max(1, min(int(n), MAX_READ)))
        except (TimeoutError, socket.timeout):
            return ""
        return data.hex() if data else None

    def sock_close(self, sid: int) -> None:
        sock = self.socks.pop(sid, None)
        if sock is not None:
            sock.close()

    def functions(self) -> dict[str, Callable]:
        return {"sock_connect": self.sock_connect, "sock_send": self.sock_send,
                "sock_recv": self.sock_recv, "sock_close": self.sock_close}

    def close(self) -> None:
        for sock in self.socks.values():
            sock.close()
        self.socks.clear()


class UartBridge:
    """Relay between a board's serial line (``uart``: host, port of its TCP server) and ``target`` (host, port).

    A thread connects to the serial line at ``start``; the target connection is opened when the board
    sends and dropped when the target closes it. ``connections`` counts target connections, ``bytes_up``
    and ``bytes_down`` the bytes relayed.
    """

    def __init__(self, uart: tuple[str, int], target: tuple[str, int], allow: Iterable[str] | None = None) -> None:
        self.uart = uart
        self.target = target
        self.check = SocketBridge(allow)
        self.connections = 0
        self.bytes_up = 0
        self.bytes_down = 0
        self.line: socket.socket | None = None
        self.peer: socket.socket | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> "UartBridge":
        self.check.resolve(*self.target)
        self.line = socket.create_connection(self.uart, timeout=CONNECT_TIMEOUT_S)
        self.line.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._thread = threading.Thread(target=self._run, name="uart-bridge", daemon=True)
        self._thread.start()
        return self

    def _open_peer(self) -> socket.socket:
        family, addr = self.check.resolve(*self.target)
        peer = socket.socket(family, socket.SOCK_STREAM)
        peer.settimeout(CONNECT_TIMEOUT_S)
        peer.connect(addr)
        peer.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.connections += 1
        return peer

    def _drop_peer(self) -> None:
        if self.peer is not None:
            self.peer.close()
            self.peer = None

    def _run(self) -> None:
        assert self.line is not None
        try:
            while not self._stop.is_set():
                ready, _, _ = select.select([self.line] + ([self.peer] if self.peer else []), [], [], 0.1)
                if self.line in ready:
                    data = self.line.recv(MAX_READ)
                    if not data:
                        return
                    if self.peer is None:
                        try:
                            self.peer = self._open_peer()
                        except OSError:
                            continue
                    self.peer.sendall(data)
                    self.bytes_up += len(data)
                if self.peer is not None and self.peer in ready:
                    try:
                        data = self.peer.recv(MAX_READ)
                    except OSError:
                        data = b""
                    if not data:
                        self._drop_peer()
                        continue
                    self.line.sendall(data)
                    self.bytes_down += len(data)
        except OSError:
            return
        finally:
            self._drop_peer()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self.line is not None:
            self.line.close()
            self.line = None

    def __enter__(self) -> "UartBridge":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
