"""TLS to the broker for ``transport.open_socket``, loaded only by boards that use it.

The broker's certificate must chain to the site CA (``tls_ca``, DER); a port whose ``tls`` cannot check
certificates (axTLS) raises OSError instead of connecting unchecked.
"""

from ledgerlink_client.transport import SocketTransport


def wrap(sock, host, ca_der):
    """A ``TlsTransport`` over the connected socket ``sock``."""
    import tls

    ctx = tls.SSLContext(tls.PROTOCOL_TLS_CLIENT)
    if not hasattr(ctx, "load_verify_locations") or not hasattr(tls, "CERT_REQUIRED"):
        raise OSError("this port's tls cannot check the broker's certificate: use plain TCP (frames are "
                      "signed or encrypted) or a board with mbedTLS")
    ctx.verify_mode = tls.CERT_REQUIRED
    ctx.load_verify_locations(cadata=ca_der)
    return TlsTransport(sock, ctx.wrap_socket(sock, server_hostname=host))


class TlsTransport(SocketTransport):
    """A TLS stream (``tls`` sockets have read/write; the timeout is the underlying socket's)."""

    def __init__(self, raw, sock):
        SocketTransport.__init__(self, sock)
        self.raw = raw

    def write(self, data):
        if self.closed:
            raise OSError("stream closed")
        self.sock.write(data)

    def read(self, n, timeout_ms):
        return self._read(self.raw, self.sock.read, n, timeout_ms)
