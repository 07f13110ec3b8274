"""A board's peer keeps only the latest exchanges, closed peers and errors, so one that runs for months does
not grow its heap; the count of exchanges goes on (CPython run of the board module)."""

from __future__ import annotations

import sys

from tests.conftest import PROJECT_ROOT

sys.path.insert(0, str(PROJECT_ROOT / "micropython"))

from ledgerlink_client import peer  # noqa: E402


class _Client:
    def publish(self, topic, payload):
        pass


def test_lists_stay_bounded_and_the_exchange_count_goes_on():
    board = peer.BoardPeer(_Client(), "plant-1", (7).to_bytes(32, "big"), "chain", [])
    for i in range(3 * peer.KEPT):
        board._exchanged(b"a" * 16, b"b" * 16, i.to_bytes(8, "big"), b"q%d" % i, b"i%d" % i)
        board.close_with(b"p%d" % i)
    assert board.exchange_count == 3 * peer.KEPT
    assert len(board.exchanges) == len(board.closed) == peer.KEPT
    assert board.closed[-1] == b"p%d" % (3 * peer.KEPT - 1)
    last = 3 * peer.KEPT - 1
    assert board.exchanges[-1][3] == len(b"q%d" % last) + len(b"i%d" % last)
