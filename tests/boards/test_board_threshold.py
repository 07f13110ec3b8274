"""A site whose ledger certifies headers with FROST threshold signatures, and board32 devices that hold its group key.

The whole client cycle (session open, ten readings, every receipt checked on the board, one command) completes at
each layout's target heap (``board_runtime.LAYOUT_HEAP``: 64 KB from ROMFS, 110 KB from .mpy files) with receipts
whose headers carry one threshold signature; and on board32 a receipt of that ledger checks, while the same receipt
with its threshold signature, its view or its header altered is refused, and a device without the group key
refuses it too (it takes vote certificates only).
"""

import hashlib
import json
import time

import pytest

from ledgerlink.core import cbor, merkle
from ledgerlink.ledger.state import encoding as enc
from ledgerlink.tools.board_runtime import CYCLE_READINGS, LAYOUT_HEAP, Board, CycleSite, cycle_ok
from ledgerlink.tools.stack import Stack

pytestmark = [pytest.mark.micropython, pytest.mark.slow]


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    stack = Stack(tmp_path_factory.mktemp("thrstack") / "site", site="thrsite", broker="mosquitto", threshold=True)
    stack.start()
    try:
        assert stack.group_key is not None
        yield CycleSite(stack)
    finally:
        stack.stop()


@pytest.fixture(scope="module", params=sorted(LAYOUT_HEAP))
def board(request, tmp_path_factory):
    b = Board(request.param, workdir=tmp_path_factory.mktemp("thrboard-" + request.param))
    yield b
    b.close()


def test_client_cycle_with_threshold_headers_at_the_layout_target(site, board):
    report, run = site.cycle(board, "session")
    assert cycle_ok(report, "session"), report
    assert report["stats"]["receipts_valid"] == CYCLE_READINGS and report["stats"]["receipts_invalid"] == 0
    assert run.heap_bytes == LAYOUT_HEAP[board.layout]
    print("%s, threshold headers: peak live %d B, %d ms in receipt checks" % (board.name, run.peak_live,
                                                                            report["check_ms"]))


def threshold_receipt(stack):
    """(frame, receipt) of a frame anchored by the gateway's key, the receipt's header threshold-certified."""
    frame = b"board-threshold-frame-%d" % time.time_ns()
    leaves = [hashlib.sha256(frame).digest(), hashlib.sha256(b"other").digest()]
    tree = merkle.MerkleTree(leaves)
    tx = enc.anchor_tx(stack.chain_id, stack.cluster.key("gateway"), time.time_ns() % (1 << 31), tree.root(),
                       len(leaves), int(time.time() * 1000))
    assert stack.ledger.submit(tx)["ok"]
    deadline = time.monotonic() + 20
    while (p := stack.ledger.tx_proof(hashlib.sha256(tx).digest())).get("threshold_header") is None:
        assert time.monotonic() < deadline, p
        time.sleep(0.1)
    assert len(p["threshold_header"][1]) == 2                       # [view, signature]: not a vote list
    receipt = {0: 1, 1: leaves[0], 2: 1, 3: 0, 4: len(leaves), 5: list(tree.inclusion_proof(0)),
               6: {1: p["tx"], 2: p["index"], 3: p["size"], 4: p["proof"]}, 7: p["threshold_header"]}
    return frame, receipt


def _flip(b):
    return b[:-1] + bytes([b[-1] ^ 1])


CHECK_HEAP = 192 * 1024     # six receipts and devices held at once: the cycle above holds the target heaps
CHECK = """
import json
from ledgerlink.core import cbor
from ledgerlink.protocol import device_protocol as dp

class Counter:
    n = 0
    def next(self):
        self.n += 1
        return self.n

with open(INPUT + '/receipts.cbor', 'rb') as f:
    case = cbor.loads(f.read())
out = []
for group_key, receipt in case['receipts']:
    dev = dp.DeviceProtocol(case['key'], 'thrsite', Counter(), case['chain'], case['validators'], None,
                            case['gateways'], group_key=group_key)
    r = dev.verify_receipt(receipt, case['frame'])
    out.append([r.valid, r.reason])
print(json.dumps(out))
"""


def test_board_checks_a_threshold_certified_receipt_and_refuses_altered_ones(site, board):
    stack = site.stack
    frame, good = threshold_receipt(stack)
    group = stack.group_key
    signature = good[7][1][1]
    cases = {"honest": (group, good)}
    for name, mutate in (("signature z", lambda r: r[7][1].__setitem__(1, _flip(signature))),
                         ("signature R", lambda r: r[7][1].__setitem__(1, bytes([signature[0]]) + _flip(signature[1:33])
                                                                     + signature[33:])),
                         ("view", lambda r: r[7][1].__setitem__(0, r[7][1][0] + 1)),
                         ("header time", lambda r: r[7][0].__setitem__(3, r[7][0][3] + 1))):
        altered = cbor.loads(cbor.dumps(good))     # a deep copy
        mutate(altered)
        cases[name] = (group, altered)
    cases["no group key"] = (None, good)
    (board.input / "receipts.cbor").write_bytes(cbor.dumps({
        "key": bytes(31) + b"\x07", "chain": stack.chain_id, "validators": list(stack.validators),
        "gateways": {stack.gateway_id: stack.public_key("gateway")}, "frame": frame,
        "receipts": list(cases.values())}))
    results = dict(zip(cases, board.run_json_result(CHECK, board_heap=CHECK_HEAP)[0]))
    assert results.pop("honest") == [True, ""]
    for name, (valid, reason) in results.items():
        assert valid is False and reason, (name, reason)
    assert "commit certificate must be" in results["no group key"][1]     # it knows vote certificates only
    assert "threshold signature does not verify" in results["signature z"][1]
