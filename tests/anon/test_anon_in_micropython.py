"""The device side of anonymous sessions inside MicroPython (board32, collector on, the library in ROMFS at a
plain ESP32's heap): the request is byte for byte the one CPython makes from the same inputs, the fog accepts
it, the board opens the fog's answer and seals a reading the cloud opens, with its counter file on the
board's filesystem."""

import json
import tempfile
from pathlib import Path

import pytest

from ledgerlink.protocol import anon_device
from ledgerlink.tools.board_runtime import Board
from tests.anon.site import SITE, Rng, Site, secret_of

HEAP = 110_000

BOARD_REQUEST = """
import json, hashlib
from ledgerlink.protocol import anon_device
class Rng:
    def __init__(self, label):
        self.seed = hashlib.sha256(label.encode()).digest()
        self.count = 0
    def __call__(self, n):
        out = b''
        while len(out) < n:
            self.count += 1
            out += hashlib.sha256(self.seed + self.count.to_bytes(8, 'big')).digest()
        return out[:n]
args = json.loads(%r)
h = bytes.fromhex
counter = anon_device.AnonCounter(INPUT + '/anon.counter', h(args['secret']))
if args['provision']:
    counter.provision()
dev = anon_device.AnonDevice(args['site'], h(args['dev']), h(args['priv']), h(args['secret']), counter, 4,
                             h(args['fog']), h(args['cloud']), Rng(args['label']))
req = dev.request(args['time'])
out = {'topic': req.topic, 'payload': req.payload.hex(), 'k': counter.last()}
if args['answer']:
    s = dev.check_response(h(args['answer']))
    out['key'] = s.key.hex()
    out['data'] = [s.seal(args['site'], b'temp=21.5 C')[0], s.seal(args['site'], b'temp=21.5 C')[1].hex()]
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def board():
    with tempfile.TemporaryDirectory(prefix="anon-board-") as tmp:
        b = Board("romfs", heap_bytes=HEAP, workdir=Path(tmp))
        yield b


def test_board_request_equals_cpython_and_the_board_opens_the_answer(board, tmp_path):
    site = Site(tmp_path)
    now = site.tick()
    args = {"site": SITE, "dev": site.net["devA"].id.hex(), "priv": site.net["devA"].priv.hex(),
            "secret": secret_of("devA").hex(), "fog": site.fogs[0].public_key.hex(),
            "cloud": site.cloud.public_key.hex(), "label": "board", "time": now, "provision": True, "answer": None}
    out, result = board.run_json_result(BOARD_REQUEST % json.dumps(args))
    expected = anon_device.build_request(SITE, site.net["devA"].id, site.net["devA"].priv, secret_of("devA"), 1,
                                         site.fogs[0].public_key, site.cloud.public_key, now, Rng("board"))
    assert out["k"] == 1 and out["topic"] == expected.topic and bytes.fromhex(out["payload"]) == expected.payload
    answered = site.submit("devA", expected)
    assert answered.refused is None
    reply = [p for t, p in answered.broker if t == expected.reply_topic][0]
    # the board makes the same request again from its inputs (its counter file restarted) and opens the answer
    args.update(answer=reply.hex())
    out, _ = board.run_json_result(BOARD_REQUEST % json.dumps(args))
    assert bytes.fromhex(out["key"]) == answered.session.key
    # the board's reading under the session (its second) opens at the cloud, which holds the grant
    assert site.cloud.open_data(out["data"][0], bytes.fromhex(out["data"][1]), site.time_ms) == (
        answered.session.session_id, 2, b"temp=21.5 C")
    # the counter lives on between runs: without provisioning, the next run takes k = 2
    args.update(provision=False, answer=None)
    out, _ = board.run_json_result(BOARD_REQUEST % json.dumps(args))
    assert out["k"] == 2
    assert result.peak_live < HEAP
