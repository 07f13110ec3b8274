"""A byte stream for ``mqtt.MQTTClient`` over a board's UART, to a host that relays it to the broker
(``ledgerlink.tools.socket_bridge.UartBridge``, like a serial modem): for boards whose only line out is
a serial port, such as the QEMU board (``UART(1)`` from its ``uart1.py``)."""


CHUNK = 128   # bytes per read: small blocks keep a fragmented heap able to serve them


class UartStream:
    """``write(data)``, ``read(n, timeout_ms)`` (b"" on timeout; at most ``CHUNK`` bytes) and ``close()``
    over a UART object with ``write``, ``read(n)`` and a ``timeout`` attribute in ms (the wait for the
    first byte)."""

    def __init__(self, uart):
        self.uart = uart
        self.closed = False

    def write(self, data):
        if self.closed:
            raise OSError("stream closed")
        self.uart.write(data)

    def read(self, n, timeout_ms):
        if self.closed:
            raise OSError("stream closed")
        self.uart.timeout = timeout_ms
        return self.uart.read(min(n, CHUNK)) or b""

    def close(self):
        self.closed = True
