"""The portable device protocol inside MicroPython, against the gateway's own checks on the host.

The VM opens a session with ``GatewayCore`` (reached through a host function), checks receipts made
over a ``FakeLedgerAdapter`` chain certified by real validator keys, and refuses forged ones with our
errors. Runs that stop after each step measure the fuel of a session open and of a receipt check.
"""

import json

import pytest

from ledgerlink.core import cbor
from ledgerlink.gateway import checks as c
from tests.device.helpers import NOW, Env

pytestmark = pytest.mark.micropython

FUEL = 20_000_000_000
HEAP = 64 * 1024 * 1024

SETUP = """
import gc, json
if hasattr(gc, "threshold"):
    gc.threshold((gc.mem_free() + gc.mem_alloc()) // 16)   # as the board client does by default (gc_threshold)
from ledgerlink.core import cbor
from ledgerlink.protocol import device_protocol as dp
from ledgerlink.core.errors import LedgerlinkError

class Counter:
    n = 0
    def next(self):
        self.n += 1
        return self.n

NOW = %(now)d
dev = dp.DeviceProtocol(bytes.fromhex(%(priv)r), %(site)r, Counter(), %(chain)r,
                        [bytes.fromhex(k) for k in %(validators)r], bytes.fromhex(%(ca)r),
                        {bytes.fromhex(%(gw_id)r): bytes.fromhex(%(gw_key)r)}, rng=host_urandom)
receipts = [cbor.loads(bytes.fromhex(r)) for r in %(receipts)r]
frames = [bytes.fromhex(f) for f in %(frames)r]
out = {}
"""

SESSION = """
req = dev.session_request(NOW)
reply = bytes.fromhex(host_call('gateway', req.topic, req.payload.hex()))
opened = dev.handle_down(reply, NOW)
k = dev.session.keys
out['session'] = [type(opened).__name__, k.key.hex(), k.base_iv.hex(), k.session_id.hex(), dev.session.gateway_id.hex()]
"""

RECEIPT = """
r = dev.verify_receipt(receipts[%(i)d], frames[%(i)d])
out.setdefault('receipts', []).append([r.valid, r.seq, r.reason, r.height])
"""

FORGED = """
def flip(b):
    return b[:-1] + bytes([b[-1] ^ 1])
def forge(i, path, value):
    r = cbor.loads(cbor.dumps(receipts[i]))
    target = r
    for step in path[:-1]:
        target = target[step]
    target[path[-1]] = value(target[path[-1]])
    return r
cases = [
    forge(0, [1], flip),                                       # another frame
    forge(0, [7, 1, 3, 0, 1], flip),                           # wrong vote signature
    forge(0, [7, 1, 3], lambda v: v[:2]),                      # too few votes
    forge(0, [7, 0, 5], lambda v: bytes(32)),                  # altered header
    forge(0, [6, 1], flip),                                    # anchor signature
    forge(0, [5], lambda v: [1]),                              # junk proof
]
names = []
for bad in cases:
    try:
        dev.check_receipt(bad, frames[0])
        names.append('accepted')
    except LedgerlinkError as exc:
        names.append(type(exc).__name__)
req = dev.session_request(NOW)
resp = cbor.loads(bytes.fromhex(host_call('gateway', req.topic, req.payload.hex())))[1]
for field, value in ((3, bytes(31) + b'\\x01'), (1, bytes(16)), (2, flip(resp[2])), (4, b'\\x05' + resp[4][1:])):
    bad = dict(resp)
    bad[field] = value
    try:
        dev.check_session_response(bad, NOW)
        names.append('accepted')
    except LedgerlinkError as exc:
        names.append(type(exc).__name__)
ignored = dev.handle_down(cbor.dumps({0: 3, 1: bad}), NOW)
names.append(type(ignored).__name__)
names.append(type(dev.handle_down(cbor.dumps({0: 3, 1: resp}), NOW)).__name__)
out['names'] = names
"""


COMMANDS = """
dev.open_commands(dp.MemoryRecord(dp.encode_commands(0, {})), NOW)   # the empty record of a provisioned device
proof = cbor.loads(bytes.fromhex(%(proof)r))
out['controller'] = dev.update_controller(proof).hex()
results = []
for topic, frame in %(commands)r:
    r = dev.handle_command(topic, bytes.fromhex(frame), NOW)
    results.append([r.accepted, r.action, r.args, r.seq, r.reason])
out['commands'] = results
"""


class Host:
    """Ledger, gateway and the receipts for two frames of one batch."""

    def __init__(self) -> None:
        self.env = Env()
        self.frames = [b"vm-frame-0", b"vm-frame-1"]
        self.receipts = self.env.receipts([self.env.gw.crypto.sha256(f) for f in self.frames], [1, 2])
        gw = self.env.net["gateway"]
        self.params = {
            "now": NOW, "priv": self.env.net["sensor"].priv.hex(), "site": self.env.gw.site,
            "chain": self.env.net.chain_id, "validators": [k.hex() for k in self.env.ledger.keys],
            "ca": self.env.ca_public.hex(), "gw_id": gw.id.hex(), "gw_key": gw.pub.hex(),
            "receipts": [cbor.dumps(r).hex() for r in self.receipts], "frames": [f.hex() for f in self.frames]}

    def commands(self) -> dict:
        env, dev_id = self.env, self.env.net["sensor"].id
        cmd_topic = "ll/%s/dev/%s/cmd" % (env.gw.site, dev_id.hex())
        frames = [env.command("controller", dev_id, 1, "open-valve", {"pct": 30}, NOW + 5000),
                  env.command("controller", dev_id, 1, "open-valve", {"pct": 30}, NOW + 5000),   # replay
                  env.command("controller", dev_id, 2, "x", None, NOW - 1),                         # expired
                  env.command("sensor", dev_id, 3, "x", None, NOW + 5000),                          # not listed
                  env.command("controller", dev_id, 4, "x", None, NOW + 5000, topic="ll/o/dev/x/cmd")]
        return {"proof": cbor.dumps(env.ledger.device_proof(env.net["controller"].id)).hex(),
                "commands": [(cmd_topic, f.hex()) for f in frames]}

    def gateway(self, topic: str, frame_hex: str) -> str:
        effects = self.env.feed(topic, bytes.fromhex(frame_hex), NOW)
        [reply] = [e for e in effects if isinstance(e, c.Reply)]
        return reply.payload.hex()

    def program(self, *parts: str) -> str:
        return (SETUP % self.params) + "".join(parts) + "\nprint(json.dumps(out))\n"


@pytest.fixture(scope="module")
def host() -> Host:
    return Host()


def run(vm, host: Host, *parts: str):
    return vm.run_json(host.program(*parts), fuel=FUEL, heap_bytes=HEAP, host_functions={"gateway": host.gateway})


def test_session_and_receipts_in_vm_match_the_gateway_with_their_cost(vm, host):
    base, fuel0 = run(vm, host)
    opened, fuel1 = run(vm, host, SESSION)
    one, fuel2 = run(vm, host, RECEIPT % {"i": 0})
    two, fuel3 = run(vm, host, RECEIPT % {"i": 0}, RECEIPT % {"i": 1})
    assert base == {}
    kind, key, base_iv, sid, gw_id = opened["session"]
    assert kind == "SessionOpened"
    gw = host.env.gw.sessions[bytes.fromhex(sid)]
    assert (gw.key.hex(), gw.base_iv.hex(), gw_id) == (key, base_iv, host.env.gw.gateway_id.hex())
    assert one["receipts"] == [[True, 1, "", two["receipts"][0][3]]]
    assert two["receipts"][1] == [True, 2, "", two["receipts"][0][3]]
    if vm.counts_fuel:
        session_fuel, first_fuel, cached_fuel = fuel1 - fuel0, fuel2 - fuel0, fuel3 - fuel2
        # the second receipt of the batch reuses the checked header and anchor signature
        assert 0 < cached_fuel * 10 < first_fuel
        print("VM fuel: setup %d, session open %d, receipt check %d (same batch, cached header %d)"
              % (fuel0, session_fuel, first_fuel, cached_fuel))


def test_forged_receipts_and_tampered_session_responses_are_refused_in_vm(vm, host):
    out, _ = run(vm, host, FORGED)
    names = out["names"]
    assert names[:6] == ["InvalidProof", "InvalidProof", "InvalidProof", "InvalidProof", "InvalidProof",
                         "InvalidMessage"]
    assert names[6:8] == ["InvalidCertificate", "InvalidMessage"]
    assert names[8] in ("InvalidPoint", "InvalidCertificate") and names[9] == "InvalidPoint"
    assert names[10:] == ["Ignored", "SessionOpened"]


def test_commands_from_a_proved_controller_in_vm(vm, host):
    out, _ = run(vm, host, COMMANDS % host.commands())
    assert out["controller"] == host.env.net["controller"].id.hex()
    ok, replay, expired, unlisted, wrong_topic = out["commands"]
    assert ok[:4] == [True, "open-valve", {"pct": 30}, 1]
    assert not replay[0] and "already used" in replay[4]
    assert not expired[0] and "expired" in expired[4]
    assert not unlisted[0] and "not a controller listed" in unlisted[4]
    assert not wrong_topic[0] and "signature" in wrong_topic[4]
