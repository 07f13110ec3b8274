"""The MicroPython client (micropython/ledgerlink_client) states its session chain, run under CPython
against the real gateway service: every session reading it sent ends up covered by a statement the
gateway verified, and none is refused."""

from __future__ import annotations

from ledgerlink.protocol import session_chain as sc
from ledgerlink.gateway import checks as c

from tests.device.helpers import CRYPTO
from tests.device.test_board_client_delivery import Clock, board, setup


def test_board_client_chain_statements_cover_its_session_readings(tmp_path):
    env, service = setup(tmp_path, c.Limits(burst=100))
    clock, link = Clock(), []
    client = board(env, service, None, clock, link, mode="session", ca_public=service.core.ca_public)
    assert client.open_session(20_000)
    for i in range(sc.EVERY_FRAMES + 2):
        client.publish({"i": i})
    assert client.flush(20_000)
    assert (service.chains.verified, service.chains.refused) == (1, 0)    # due after 16 readings
    assert client.state_chain() == 1                                      # the rest, as close() does
    assert client.flush(20_000)
    assert (service.chains.verified, service.chains.refused) == (2, 0)
    sent = [p for t, p in link[-1].published if t == client.topic_up and p[0] == 0xD0]
    rows = service.store._query("SELECT frame_hash FROM chain_frames")
    assert len(sent) == sc.EVERY_FRAMES + 2 and {r[0] for r in rows} == {CRYPTO.sha256(p) for p in sent}


def test_board_client_states_a_quiet_chain_after_every_ms_without_another_reading(tmp_path):
    env, service = setup(tmp_path, c.Limits(burst=100))
    clock, link = Clock(), []
    client = board(env, service, None, clock, link, mode="session", ca_public=service.core.ca_public)
    assert client.open_session(20_000)
    started = clock.now
    for i in range(3):                                                    # then the board goes quiet
        client.publish({"i": i})
    assert client.flush(20_000) and service.chains.verified == 0
    while clock.now - started < sc.EVERY_MS + 1_000:                      # its idle loop
        client.step(500)
    assert client.flush(20_000)
    assert (service.chains.verified, service.chains.refused) == (1, 0)
    sent = [p for t, p in link[-1].published if t == client.topic_up and p[0] == 0xD0]
    rows = service.store._query("SELECT frame_hash FROM chain_frames")
    assert len(sent) == 3 and {r[0] for r in rows} == {CRYPTO.sha256(p) for p in sent}
