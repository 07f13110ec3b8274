"""The board client with updates attached (ledgerlink_client.update) on board32, over its own TCP to a real
mosquitto: the site's UpdateService offers a config release, the board checks and installs it, reports
the version it runs, and a valid receipt is its check-in; at the board issue's target (library in ROMFS,
64 KB of heap) and on a plain ESP32's heap. ``python3 -m tests.updates.test_update_board_mqtt`` prints the
least heap it takes."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import pytest

from ledgerlink.core import cbor
from ledgerlink.protocol import update_check, update_transport as ut
from ledgerlink.protocol.codes import IMAGE_CONFIGURATION
from ledgerlink.tools.admin_release import UpdateService, write_release
from ledgerlink.tools.board_runtime import LAYOUT_HEAP, Board
from ledgerlink.tools.deploy import load_profile
from tests.micropython.test_client_in_vm import Broker, free_port
from tests.updates.site import DEVICE_CLASS, ReleaseSite, offer_digest
from tests.updates.test_update_agent import make_agent

pytestmark = pytest.mark.slow

SITE = "plant-9"
TICKS_PERIOD = 1 << 30          # time.ticks_ms() wraps at this on MicroPython ports
KEY = bytes(31) + b"\x2a"
CONFIG = b'{"interval_s": 4, "threshold": 30}' * 50         # 1,750 bytes


PROGRAM = r"""
import hashlib, json, os
from ledgerlink_client import device, mqtt, transport, update

class Valid:
    valid = True

def factory():
    return mqtt.MQTTClient(transport.open_stream('127.0.0.1', %(port)d, None), 'll-board', keepalive=30)

setup = json.loads(open(INPUT + '/setup.json').read())
cfg = {'site': %(site)r, 'mode': 'signed', 'identity_key': bytes.fromhex(setup['key']),
       'chain_id': setup['chain'], 'validators': [bytes.fromhex(k) for k in setup['validators']]}
client = device.DeviceClient(cfg, factory)
root = INPUT + '/dev'
os.mkdir(root)
u = update.attach(client, %(cls)r, root + '/upd', config_path=root + '/config.json')
installed = False
for i in range(600):
    client.step(50)
    if u._client_state.get('refusals'):
        break
    try:
        os.stat(root + '/config.json')
        installed = True
        break
    except OSError:
        pass
running = u.running()
config = None
if installed:                               # its digest, read a block at a time: the config is not held whole
    h = hashlib.sha256()
    with open(root + '/config.json', 'rb') as f:
        block = f.read(256)
        while block:
            h.update(block)
            block = f.read(256)
    config, h = h.digest().hex(), None
out = {'installed': installed, 'config': config,
       'trial': running.get(2, {}).get('trial'), 'sequence': running.get(2, {}).get('sequence'),
       'digest': (running.get(2, {}).get('digest') or b'').hex(), 'old_kept': 'config.json.old' in os.listdir(root)}
client.on_result(Valid())                   # the first valid receipt after the new config: its check-in
for i in range(10):
    client.step(50)
out["trial_after_check_in"] = u.running().get(2, {}).get("trial")
client.close()
print(json.dumps(out))
"""


def checked_in(publisher, versions) -> bool:
    return any(row.get("config", {}).get("trial") is False for row in versions.values())


def run_board(tmp_path: Path, heap: int, until=checked_in, program: str | list[str] = PROGRAM, payload: bytes = CONFIG,
              component: int = IMAGE_CONFIGURATION, **release) -> tuple[dict, object, dict, bytes, object]:
    """(the board's output, its run result, the service's versions, the offer, the service's publisher) of one
    run of ``program`` (or of each of a list, the last one's output) at ``heap`` with a release of ``payload``
    as ``component``, once ``until(publisher,
    versions)`` holds (5 s at most); ``release``: ReleaseSite.release options (signer, on_ledger, chunk_size)."""
    site = ReleaseSite()
    release = {"version": "c-3", "chunk_size": 512, **release}
    offer = site.release(payload, component, 3, **release)
    write_release(tmp_path / "releases", offer, payload)
    broker = Broker(free_port())
    broker.start()
    service = UpdateService("127.0.0.1", broker.port, SITE, tmp_path / "releases")
    service.start()
    setup = tmp_path / "setup.json"
    setup.write_text(json.dumps({"key": KEY.hex(), "chain": site.chain_id, "validators": [k.hex() for k in site.keys]}))
    try:
        with Board("romfs", heap_bytes=heap, files={"setup.json": setup}, workdir=tmp_path / "b") as board:
            for one in [program] if isinstance(program, str) else program:     # runs of one board, its files kept
                out, result = board.run_json_result(one % {"port": broker.port, "site": SITE, "cls": DEVICE_CLASS},
                                                    timeout=120)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not until(service.publisher, service.versions()):
            time.sleep(0.05)
        versions = service.versions()
    finally:
        service.stop()
        broker.stop()
    return out, result, versions, offer, service.publisher


ROMFS_TARGET = LAYOUT_HEAP["romfs"]     # the board issue's heap target with the library in ROMFS (64 KB)


@pytest.mark.parametrize("heap", [ROMFS_TARGET, "esp32"])
def test_board_client_takes_a_release_over_mqtt(tmp_path, heap):
    heap = load_profile(heap)["memory"]["heap_bytes"] if isinstance(heap, str) else heap
    out, result, versions, offer, publisher = run_board(tmp_path, heap)
    assert out["installed"] and out["config"] == hashlib.sha256(CONFIG).hexdigest()
    assert out["sequence"] == 3 and out["trial"] is True and out["old_kept"] is False
    assert bytes.fromhex(out["digest"]) == offer_digest(offer)
    assert out["trial_after_check_in"] is False
    assert list(versions.values()) == [{"config": {"running": 3, "version": "c-3", "trial": False, "accepted": 3,
                                                   "latest": 3}}]
    assert result.peak_live < result.heap_bytes


def test_board_client_refuses_a_release_of_a_key_that_is_not_a_maintenance_key(tmp_path):
    out, result, versions, offer, publisher = run_board(
        tmp_path, ROMFS_TARGET, lambda publisher, versions: any(3 in s for s in publisher.statuses.values()),
        signer="sensor", on_ledger=False)
    assert not out["installed"] and out["sequence"] is None and out["trial_after_check_in"] is None
    status = next(iter(publisher.statuses.values()))
    assert status[3] == [[update_check.UPDATE_UNTRUSTED_SIGNER, offer_digest(offer)]]
    assert list(versions.values()) == [{"config": {"running": 0, "version": None, "trial": False, "accepted": 0,
                                                   "latest": 3}}]


TICKING = r"""
import json, os, sys, time
from ledgerlink_client import device, update
from ledgerlink.protocol import update_transport as ut

STATUS_EVERY_MS = ut.STATUS_EVERY_MS
ut = None
setup = json.loads(open(INPUT + '/setup.json').read())
cfg = {'site': 'plant-9', 'mode': 'signed', 'identity_key': bytes.fromhex(setup['key']),
       'chain_id': setup['chain'], 'validators': [bytes.fromhex(k) for k in setup['validators']]}
now = [%(start)s]
client = device.DeviceClient(cfg, lambda: None, ticks_ms=lambda: now[0])
os.mkdir(INPUT + '/dev')
u = update.attach(client, %(cls)r, INPUT + '/dev/upd', config_path=INPUT + '/dev/config.json')
"""


def run_ticking(tmp_path: Path, start: str, body: str) -> object:
    """The output of ``body`` on board32 after a board client with updates attached (its ms counter ``now[0]``,
    from ``start``; no broker)."""
    site = ReleaseSite()
    setup = tmp_path / "setup.json"
    setup.write_text(json.dumps({"key": KEY.hex(), "chain": site.chain_id, "validators": [k.hex() for k in site.keys]}))
    with Board("romfs", files={"setup.json": setup}, workdir=tmp_path / "b") as board:
        return board.run_json_result((TICKING + body) % {"cls": DEVICE_CLASS, "start": start}, timeout=60)[0]


def test_board_repeats_its_status_across_the_wrap_of_its_ms_counter(tmp_path):
    """The board's ms counter starts 1 s before it wraps."""
    out = run_ticking(tmp_path, "time.ticks_add(0, -1000)", """
out = [len(u.tick())]                               # starts the status timer
now[0] = time.ticks_add(now[0], STATUS_EVERY_MS + 1000)
out.append(len(u.tick()))                           # past the wrap: the status is due
print(json.dumps(out))
""")
    assert out == [0, 1]


def test_an_idle_board_loads_no_update_code_in_its_ticks(tmp_path):
    """No download, nothing on trial: a tick loads the agent only when the status repeat is due."""
    out = run_ticking(tmp_path, "0", """
builds = [0]
_build = update.Updates._build
def counted(self):
    builds[0] += 1
    return _build(self)
update.Updates._build = counted
out = []
for step in range(6):                               # a tick each 1.5 s: the first starts the status timer
    out.append([len(u.tick()), builds[0], 'ledgerlink.protocol.update_agent' in sys.modules])
    now[0] += 1500
now[0] = STATUS_EVERY_MS + 1                        # the status repeat is due
out.append([len(u.tick()), builds[0], 'ledgerlink.protocol.update_agent' in sys.modules])
print(json.dumps(out))
""")
    assert out == [[0, 1, False]] + [[0, 1, False]] * 5 + [[1, 2, False]]


def test_a_stalled_download_is_asked_again_across_the_wrap_of_the_ms_counter(tmp_path):
    site = ReleaseSite()
    agent = make_agent(site, tmp_path)
    agent.boot(0)
    client = ut.UpdateClient(agent, lambda a, b: (a - b + TICKS_PERIOD // 2) % TICKS_PERIOD - TICKS_PERIOD // 2)
    offer = site.release(CONFIG, IMAGE_CONFIGURATION, 3, chunk_size=512)
    before_wrap = TICKS_PERIOD - 1000
    assert client.handle(cbor.dumps([ut.MSG_OFFER, offer]), before_wrap)        # the first chunk request
    assert client.retry(ut.RETRY_MS - 2000) == []               # 4 s after, the counter wrapped: not yet
    assert client.retry(ut.RETRY_MS - 1000) == client.requests()


def test_an_offer_is_checked_as_a_view_into_its_message_and_only_a_deterministic_one(tmp_path):
    site = ReleaseSite()
    agent = make_agent(site, tmp_path)
    agent.boot(0)
    seen = []
    check = agent.offer
    agent.offer = lambda data, stored=False, checked=None: (seen.append(data), check(data, stored, checked))[1]
    offer = site.release(CONFIG, IMAGE_CONFIGURATION, 3, chunk_size=512)
    message = cbor.dumps([ut.MSG_OFFER, offer])
    client = ut.UpdateClient(agent)
    long_head = b"\x82\x01\x5a" + len(offer).to_bytes(4, "big") + offer       # not deterministic CBOR
    assert client.handle(message + b"\x00", 0) == [] and client.handle(long_head, 0) == [] and seen == []
    assert client.handle(message, 0) == client.requests() != []
    assert isinstance(seen[0], memoryview) and seen[0].obj is message and bytes(seen[0]) == offer


if __name__ == "__main__":
    import tempfile

    low, high = 32 * 1024, 110 * 1024
    while high - low > 1024:
        mid = (low + high) // 2
        with tempfile.TemporaryDirectory() as tmp:
            try:
                ok = run_board(Path(tmp), mid)[0]["installed"]
            except Exception:       # noqa: BLE001 - MemoryError on the board
                ok = False
        low, high = (low, mid) if ok else (mid, high)
    print("board32 romfs: a board client installs a config release over MQTT at %d B heap, not at %d B"
          % (high, low))
