"""Host side of the sockets a MicroPython VM uses through host functions (``transport.CallTransport``)."""

import socket


class SocketBridge:
    """Host side of the VM's sockets; ``before_connect(attempt)`` runs before each connection attempt."""

    def __init__(self) -> None:
        self.socks: dict[int, socket.socket] = {}
        self.attempts = 0
        self.refused = 0
        self.bytes_up = 0
        self.before_connect = None

    def sock_connect(self, host: str, port: int) -> int:
        self.attempts += 1
        if self.before_connect is not None:
            self.before_connect(self.attempts)
        try:
            sock = socket.create_connection((host, port), timeout=2)
        except ConnectionRefusedError:
            self.refused += 1
            raise
        sid = len(self.socks) + 1
        self.socks[sid] = sock
        return sid

    def sock_send(self, sid: int, data: str) -> int:
        raw = bytes.fromhex(data)
        self.socks[sid].sendall(raw)
        self.bytes_up += len(raw)
        return len(raw)

    def sock_recv(self, sid: int, n: int, timeout_ms: int) -> str | None:
        sock = self.socks[sid]
        sock.settimeout(max(timeout_ms, 1) / 1000)
        try:
            data = sock.recv(min(n, 2048))
        except (TimeoutError, socket.timeout):
            return ""
        return data.hex() if data else None

    def sock_close(self, sid: int) -> None:
        self.socks.pop(sid).close()

    def functions(self) -> dict:
        return {"sock_connect": self.sock_connect, "sock_send": self.sock_send,
                "sock_recv": self.sock_recv, "sock_close": self.sock_close}

    def close(self) -> None:
        for sock in self.socks.values():
            sock.close()
