"""The MicroPython board client as either side of a peer session: on board32 (library in ROMFS, a 64 KB
heap: the board target) it queries a CPython device and answers a CPython device's query, over the real
mosquitto with its own broker account, every directory answer checked on the board; when the ledger
bans its partner, the board closes that session on the directory's proven notice."""

from __future__ import annotations

import threading
import time

import pytest

from ledgerlink.core import cbor
from ledgerlink.protocol import peer_session as ps
from ledgerlink.tools.board_runtime import LAYOUT_HEAP, Board

from .conftest import machine_state

pytestmark = pytest.mark.micropython

BOARD_HEAP = LAYOUT_HEAP["romfs"]        # the board target with the library in ROMFS (64 KB)

BOARD_PEER = """
import gc, json, time
from ledgerlink.core import cbor
from ledgerlink.protocol import peer_session as ps
from ledgerlink_client import mqtt, transport
from ledgerlink_client.peer import BoardPeer

with open(INPUT + '/config.cbor', 'rb') as f:
    cfg = cbor.loads(f.read())
client = mqtt.MQTTClient(transport.open_socket(cfg['host'], cfg['port']), cfg['username'], keepalive=60,
                         username=cfg['username'], password=cfg['password'])
client.connect()
answered = []

def handler(packet, peer):
    answered.append(peer)
    return ps.INFO_OK, {'machine': 'board', 'subject': packet.subject}

board = BoardPeer(client, cfg['site'], cfg['key'], cfg['chain_id'], cfg['validators'], handler)
board.start()
gc.collect()
gc.peak_live(True)
out = board.query(cfg['peer'], 'state', {'from': 'board'}, 20000)
report = {'case': out['case'], 'info': out['info'].body if out['info'] else None}
deadline = time.ticks_add(time.ticks_ms(), 60000)
while not answered and time.ticks_diff(deadline, time.ticks_ms()) > 0:
    board.serve(100)
report['answered'] = [p.hex() for p in answered]
report['sessions'] = len(board.sessions)
deadline = time.ticks_add(time.ticks_ms(), 30000)
while not board.closed and time.ticks_diff(deadline, time.ticks_ms()) > 0:     # the partner's ban comes
    board.serve(100)
report['closed'] = [p.hex() for p in board.closed]
report['left'] = len(board.sessions)
report['errors'] = board.errors
report['peak'] = gc.peak_live()[0]
client.disconnect()
print(json.dumps(report))
"""


@pytest.mark.slow
def test_board_is_either_side_of_a_peer_session(site, tmp_path):
    pb, b_id = site.register({"type": "carding-machine", "line": "MP"})
    pa, a_id = site.register({"type": "lap-former", "line": "MP"})
    board_key, board_id = site.register({"type": "combing-machine", "line": "MP"})
    b = site.device(pb, machine_state("carder"))
    a = site.device(pa)
    login = site.stack.device_login(board_id)
    board = Board("romfs", heap_bytes=BOARD_HEAP, workdir=tmp_path)
    (board.input / "config.cbor").write_bytes(cbor.dumps({
        "host": site.stack.broker_host, "port": site.stack.broker_port, "site": "m2m",
        "username": login["username"], "password": login["password"], "key": board_key,
        "chain_id": site.stack.chain_id, "validators": site.stack.validators, "peer": b_id}))
    result: dict = {}
    run = threading.Thread(target=lambda: result.update(report=board.run_json(BOARD_PEER, timeout=180)[0]),
                           daemon=True)
    run.start()
    deadline = time.monotonic() + 120
    while not any(e.sender == board_id for e in b.exchanges) and run.is_alive() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert any(e.sender == board_id for e in b.exchanges), "the board's query did not reach the CPython device"
    out = a.query(board_id, "state", timeout=60)                  # the board answers within its serve loop
    assert out.case == "online" and out.recorded[2] == 0
    site.stack.ban(a_id, "test")                                   # the board ends its session with a
    run.join(timeout=120)
    assert "report" in result, "the board did not finish its part"
    report = result["report"]
    assert report["case"] == "online" and report["info"] == {"machine": "carder", "n": 1, "args": {"from": "board"}}
    assert out.case == "online" and out.info.status == ps.INFO_OK
    assert out.info.body == {"machine": "board", "subject": "state"}
    assert report["answered"] == [a_id.hex()] and report["errors"] == []
    assert report["sessions"] == 2 and report["closed"] == [a_id.hex()] and report["left"] == 1
    assert b.communication_record(a_id, out.exchange.digest)[2] == board_id        # a is banned by now
    print("board peer peak heap %d of %d" % (report["peak"], BOARD_HEAP))
