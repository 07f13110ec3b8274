"""The board client in MicroPython against the real stack: mosquitto, a 4-node ledger cluster and the gateway.

The client in the VM builds its registration request, which the test countersigns with the admin key
(``register`` host function, as an installer would); it opens its session with the gateway through
ECQV, publishes readings encrypted under it, and checks each receipt the gateway sends (batch
inclusion, anchor inclusion, certified header with 2f+1 validator signatures) inside the VM. Then the
board "resets": a new client on the same storage takes the stored session back and its readings are
accepted without a new session request; near the end of the (short) session lifetime it opens the next
session before the old one expires. The WASI VM reaches the broker only through ``SocketBridge``;
board32 (at its layout's heap) through its own sockets.
"""

import json
import time

import pytest

from ledgerlink.ledger.state import encoding as enc
from ledgerlink.tools.stack import Stack
from tests.micropython.bridge import SocketBridge
from tests.mqtt_helpers import Verified

pytestmark = [pytest.mark.micropython, pytest.mark.slow]

SITE = "vmsite"
N = 3
FUEL = 40_000_000_000
HEAP = 256 * 1024 * 1024
LIFETIME_S = 75
MARGIN_S = 60          # a session is renewed once fewer than MARGIN_S of its LIFETIME_S seconds are left


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    s = Stack(tmp_path_factory.mktemp("vmstack") / "site", site=SITE, broker="mosquitto",
              limits={"session_lifetime_s": LIFETIME_S})
    s.start()
    yield s
    s.stop()




PROGRAM = """
import json, time
from ledgerlink_client import device, mqtt, queue, transport

def factory():
    return mqtt.MQTTClient(transport.open_stream('127.0.0.1', %(port)d, %(call)s), %(user)r, keepalive=30,
                           username=%(user)r, password=%(password)r)

def ms():
    return time.ticks_ms()

cfg = {'site': %(site)r, 'identity_key': bytes.fromhex(%(priv)r), 'ca_public': bytes.fromhex(%(ca)r),
       'chain_id': %(chain)r, 'validators': [bytes.fromhex(k) for k in %(validators)r],
       'gateway_keys': {bytes.fromhex(%(gw_id)r): bytes.fromhex(%(gw_key)r)}, 'session_margin_s': %(margin)d}
storage = queue.MemoryStorage()
out = {}
t = ms()
client = device.DeviceClient(cfg, factory, storage=storage, rng=host_urandom)
out['init_ms'] = ms() - t
req = client.protocol.registration_request(client.time_ms(), 1, {'name': 'vm-board'})
out['registered_at'] = host_call('register', req.payload.hex())
held = client.publish({'t': 19})
t = ms()
out['opened'] = client.open_session(120000)
out['session_ms'] = ms() - t
for i in range(%(n)d):
    client.publish({'t': 20 + i, 'i': i})
out['flushed'] = client.flush(30000)
t = ms()
out['checked'] = client.wait_receipts(%(n)d + 1, 120000)
out['receipts_ms'] = ms() - t
out['held'] = held
out['results'] = [[r.valid, r.seq, r.reason, r.height] for r in client.receipts]
out['stats'] = client.stats
out['session_id'] = client.session.keys.session_id.hex()
out['device_id'] = client.device_id.hex()
client.close()

again = device.DeviceClient(cfg, factory, storage=storage, rng=host_urandom)
out['restored'] = again.stats['sessions_restored']
out['after_seq'] = again.publish({'after': 1})
out['flushed_again'] = again.flush(30000)
out['checked_again'] = again.wait_receipts(1, 120000)
out['requests_after_reset'] = again.stats['session_requests']
first_sid = again.session.keys.session_id
t = ms()
while again.stats['sessions_opened'] < 1 and ms() - t < 60000:
    again.step(100)
out['refresh_wait_ms'] = ms() - t
out['new_session'] = again.session.keys.session_id != first_sid
out['valid_until'] = again.session.valid_until_s
out['last_seq'] = again.publish({'after': 2})
out['flushed_last'] = again.flush(30000)
out['checked_last'] = again.wait_receipts(2, 120000)
out['again'] = [[r.valid, r.seq, r.reason] for r in again.receipts]
out['stats_again'] = again.stats
again.close()
print(json.dumps(out))
"""


def test_board_client_opens_a_session_and_checks_receipts_against_the_real_stack(stack, client_vm):
    crypto = stack.crypto
    priv = crypto.generate_private_key()
    bridge = SocketBridge()
    registered: list[dict] = []

    def register(request_hex: str) -> int:
        [res] = stack.register([bytes.fromhex(request_hex)])
        registered.append(res)
        return res["height"]

    program = PROGRAM % {
        "call": "None" if client_vm.sockets else "host_call", "port": stack.broker_port, "site": SITE, "priv": priv.hex(), "ca": stack.public_key("gw-ca").hex(),
        "chain": stack.chain_id, "validators": [k.hex() for k in stack.validators],
        "gw_id": stack.gateway_id.hex(), "gw_key": stack.public_key("gateway").hex(), "n": N, "margin": MARGIN_S,
        **{"user" if k == "username" else k: v
           for k, v in stack.device_login(enc.device_id(crypto.public_key(priv, True))).items()}}
    app = Verified(stack.broker_port, SITE, 'vm-app', stack.consumer_login())
    try:
        started = time.monotonic()
        sockets = {} if client_vm.sockets else bridge.functions()   # board32 has its own sockets
        result = client_vm.run(program, fuel=FUEL, heap_bytes=HEAP, timeout=400,
                               host_functions=dict(sockets, register=register))
        wall = time.monotonic() - started
        deadline = time.monotonic() + 5
        while len(app.readings) < N + 3 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        app.close()
        bridge.close()
    out = json.loads(result.stdout.strip().splitlines()[-1])
    device_id = crypto.sha256(crypto.public_key(priv, True))[:16]
    assert out["device_id"] == device_id.hex() and len(registered) == 1
    assert out["held"] is None and out["opened"] is True and out["flushed"] is True
    stats = out["stats"]
    assert stats["session_requests"] == 1 and stats["sessions_opened"] == 1
    assert out["checked"] == N + 1 and stats["receipts_valid"] == N + 1 and stats["receipts_invalid"] == 0
    assert sorted(r[1] for r in out["results"]) == list(range(1, N + 2))
    assert all(r[0] and r[2] == "" and r[3] >= 1 for r in out["results"])
    # after the reset: the stored session, no new request, a valid receipt for the next number
    assert out["restored"] == 1 and out["flushed_again"] is True and out["checked_again"] == 1
    assert out["requests_after_reset"] == 0
    # renewed before the end of its lifetime: a new session, whose reading is accepted and receipted
    again = out["stats_again"]
    assert again["session_requests"] == 1 and again["sessions_opened"] == 1 and out["new_session"] is True
    assert out["valid_until"] - time.time() > LIFETIME_S - 30
    assert out["flushed_last"] is True and again["receipts_valid"] == 2 and again["receipts_invalid"] == 0
    chained = out["last_seq"] + 1       # the chain statement of the first session, sent once the second one seals
    assert [r[:2] for r in out["again"] if r[1] != chained] == [[True, out["after_seq"]], [True, out["last_seq"]]]
    assert N + 1 < out["after_seq"] < out["last_seq"]
    # what the gateway accepted and republished is what the board sealed under its sessions
    mine = sorted((r for r in app.readings if r[1] == device_id and r[2] != chained), key=lambda r: r[2])
    assert [r[2] for r in mine] == list(range(1, N + 2)) + [out["after_seq"], out["last_seq"]]
    assert [r[4] for r in mine] == ([{"t": 19}] + [{"t": 20 + i, "i": i} for i in range(N)]
                                    + [{"after": 1}, {"after": 2}])
    assert all(r[6] == stack.gateway_id.hex() for r in mine)
    print("in %s: init %d ms, session open %d ms, %d receipts checked in %d ms; %s fuel in all, %.1f s wall"
          % (client_vm.name, out["init_ms"], out["session_ms"], N + 1, out["receipts_ms"], result.fuel_used, wall))
