"""A byte stream for ``mqtt.MQTTClient`` over a socket held by the host (a VM or virtual board reaching the
network through host calls); ``transport.open_stream`` picks it when given ``call``."""


class CallTransport:
    """A socket held by a host process, reached through ``call(name, *args)``.

    The host offers ``sock_connect(host, port) -> id``, ``sock_send(id, hex) -> n``,
    ``sock_recv(id, n, timeout_ms) -> hex`` ("" on timeout, null once closed) and ``sock_close(id)``;
    ``call`` raises OSError when the host reports an error (as ``host_call`` in the VM does).
    """

    def __init__(self, call, host, port):
        self.call = call
        self.id = call("sock_connect", host, port)
        self.closed = False

    def write(self, data):
        if self.closed:
            raise OSError("stream closed")
        self.call("sock_send", self.id, bytes(data).hex())

    def read(self, n, timeout_ms):
        if self.closed:
            raise OSError("stream closed")
        data = self.call("sock_recv", self.id, n, timeout_ms)
        if data is None:
            self.closed = True
            raise OSError("connection closed by peer")
        return bytes.fromhex(data)

    def close(self):
        if not self.closed:
            self.closed = True
            try:
                self.call("sock_close", self.id)
            except OSError:
                pass
