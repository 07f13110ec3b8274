"""The virtual board's port (``ledgerlink.tools.virtual_board``) is bounded like our other ports: a silent
connection and a command left half sent are closed after their time limits, connections beyond the cap are
closed at once, and the board then serves the next client. Before, one silent client held the board for
ever and the next could not even connect (a listen backlog of 1)."""

import socket
import time

from ledgerlink.tools.chaos import _served_board
from ledgerlink.tools.virtual_board import VirtualBoard


def _closed_after(conn: socket.socket, limit: float) -> float:
    """Seconds until the server closes ``conn``; AssertionError when it is still open after ``limit``."""
    started = time.monotonic()
    conn.settimeout(limit)
    try:
        while conn.recv(4096):
            pass
    except socket.timeout:
        raise AssertionError("connection still open after %g s" % limit) from None
    except OSError:
        pass
    return time.monotonic() - started


def test_idle_half_sent_and_surplus_connections_are_closed(tmp_path):
    with VirtualBoard(tmp_path / "flash", idle_s=1.0, command_s=1.0, max_connections=2) as board:
        silent = socket.create_connection(("127.0.0.1", board.port))
        half = socket.create_connection(("127.0.0.1", board.port))
        half.sendall(b"\x01print(1")                         # raw REPL, a program never ended
        time.sleep(0.3)
        surplus = socket.create_connection(("127.0.0.1", board.port))
        assert _closed_after(surplus, 2) < 1.0                 # over the cap: closed at once
        assert _closed_after(silent, 5) < 3                    # idle limit
        assert _closed_after(half, 5) < 3                      # command limit, counted once it is served
        assert board.refused == 1
        assert _served_board(board.port)
        for c in (silent, half, surplus):
            c.close()
