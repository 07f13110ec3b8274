"""The VM's sockets on the host: ``ledgerlink.tools.socket_bridge.SocketBridge`` (kept here for the tests' imports)."""

from ledgerlink.tools.socket_bridge import SocketBridge

__all__ = ["SocketBridge"]
