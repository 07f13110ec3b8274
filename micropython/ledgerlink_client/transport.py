"""Byte streams for ``mqtt.MQTTClient``: a socket (boards, CPython) or host calls (a VM with a bridge).

A stream has ``write(data)``, ``read(n, timeout_ms)`` (b"" on timeout, OSError once closed) and ``close()``.
"""

_TIMEOUT_ERRNOS = (11, 110, 116)  # EAGAIN, ETIMEDOUT (Linux), ETIMEDOUT (lwIP)


class SocketTransport:
    """A connected socket (``socket.socket`` or a TLS-wrapped one)."""

    def __init__(self, sock):
        self.sock = sock
        self.closed = False

    def write(self, data):
        if self.closed:
            raise OSError("stream closed")
        view = memoryview(data)
        while len(view):
            sent = self.sock.send(view)
            if sent is None or sent <= 0:
                raise OSError("socket send failed")
            view = view[sent:]

    def read(self, n, timeout_ms):
        return self._read(self.sock, self.sock.recv, n, timeout_ms)

    def _read(self, timed, receive, n, timeout_ms):
        """``receive(n)`` under a timeout set on the socket ``timed``: b"" when it passes, OSError when the
        peer closed."""
        if self.closed:
            raise OSError("stream closed")
        timed.settimeout(max(timeout_ms, 1) / 1000)
        try:
            data = receive(n)
        except OSError as exc:
            code = exc.args[0] if exc.args else None
            if code in _TIMEOUT_ERRNOS or type(exc).__name__ in ("timeout", "TimeoutError"):
                return b""
            raise
        if not data:
            self.closed = True
            raise OSError("connection closed by peer")
        return data

    def close(self):
        if not self.closed:
            self.closed = True
            self.sock.close()


def open_socket(host, port, timeout_ms=5000, tls_ca=None):
    """Connect a TCP socket to ``host:port`` and wrap it (board networking must already be up).

    ``tls_ca``: the site CA certificate (DER bytes): TLS, and the broker's certificate must chain to it.
    A port whose ``tls`` cannot check certificates (axTLS) raises OSError rather than connect unchecked."""
    import socket

    addr = socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM)[0][-1]
    sock = socket.socket()
    try:
        sock.settimeout(timeout_ms / 1000)
        sock.connect(addr)
        if tls_ca is not None:
            from ledgerlink_client.tls_transport import wrap     # only boards that use TLS load it

            return wrap(sock, host, tls_ca)
    except BaseException:
        sock.close()
        raise
    return SocketTransport(sock)


def open_stream(host, port, call=None, timeout_ms=5000, tls_ca=None):
    """The board's route to ``host:port``: through the host's sockets when ``call`` (the virtual
    board's ``host_call``, present when it runs with --network) is given, else the board's own TCP
    (with TLS checked against ``tls_ca``, when given)."""
    if call is not None:
        from ledgerlink_client.call_transport import CallTransport

        return CallTransport(call, host, port)
    return open_socket(host, port, timeout_ms, tls_ca)


def __getattr__(name):
    """``CallTransport`` (``call_transport``), loaded when first named: a board with its own network never
    holds it."""
    if name == "CallTransport":
        from ledgerlink_client.call_transport import CallTransport

        return CallTransport
    raise AttributeError(name)
