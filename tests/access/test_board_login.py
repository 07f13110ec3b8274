"""A board's broker password follows its key: after a rotation of its key on the ledger the board client
(``DeviceClient.key_rotated``, on board32 at a board's heap) computes the password the site gives its
account (``SiteAccess.follow_record``, what ``ledgerlink up``'s follow loop sets) with the same code
(``ledgerlink.protocol.broker_login``), and reconnects with it while the old password is refused."""

from __future__ import annotations

import json
import time

import pytest

from ledgerlink.core import cbor
from ledgerlink.ledger.state import encoding as enc
from ledgerlink.protocol import broker_login
from ledgerlink.tools.board_runtime import Board
from ledgerlink.tools.broker_access import SiteAccess, device_username, key_password
from tests.access.conftest import CRYPTO, Client, Dev

pytestmark = pytest.mark.micropython

BOARD_HEAP = 110_000                    # a plain ESP32's free heap (hardware/boards/esp32.toml), library in ROMFS

ROTATE_OFFLINE = """
import gc, json, sys
from ledgerlink.core import cbor
from ledgerlink_client import device

with open(INPUT + '/config.cbor', 'rb') as f:
    cfg = cbor.loads(f.read())

def factory():
    raise OSError('no broker here')

client = device.DeviceClient(cfg, factory)
gc.collect()
before = gc.mem_alloc()
gc.peak_live(True)
login = client.key_rotated(cfg['new_key'])
gc.collect()
print(json.dumps({'login': login, 'kept': gc.mem_alloc() - before, 'peak': gc.peak_live()[0] - before,
                  'loaded': [m for m in ('ledgerlink.core.ecdh', 'ledgerlink.protocol.broker_login')
                             if m in sys.modules],
                  'public_key': client.protocol.public_key.hex(), 'device_id': client.device_id.hex()}))
"""


@pytest.fixture(scope="module")
def board(tmp_path_factory):
    b = Board("romfs", heap_bytes=BOARD_HEAP, workdir=tmp_path_factory.mktemp("board-login"))
    yield b
    b.close()


def test_portable_and_cpython_backends_give_the_same_password():
    site, device = CRYPTO.generate_private_key(), CRYPTO.generate_private_key()
    user = device_username(bytes(16))
    site_side = key_password(site, CRYPTO.public_key(device, True), user)
    assert site_side == broker_login.password(device, CRYPTO.public_key(site, True), user, "portable")
    assert site_side == broker_login.password(device, CRYPTO.public_key(site), user, "cpython")
    assert len(site_side) == 32


def test_the_board_computes_the_password_the_site_follows_its_rotation_with(tmp_path, board):
    access = SiteAccess(tmp_path / "broker", "bl")
    old, new = CRYPTO.generate_private_key(), CRYPTO.generate_private_key()
    old_pub, new_pub = CRYPTO.public_key(old, True), CRYPTO.public_key(new, True)
    dev = enc.device_id(old_pub)
    [first] = access.add_many([(device_username(dev), "device", dev, None)], keys={device_username(dev): old_pub.hex()})
    lines = access.follow_record(dev, {1: dev, 2: new_pub, 5: 1, 8: 2})      # the ledger's record after the rotation
    assert lines and "new password for the device's rotated key" in lines[0], lines
    site_login = access.login(device_username(dev))
    assert site_login["password"] != first["password"]
    (board.input / "config.cbor").write_bytes(cbor.dumps({
        "site": "bl", "mode": "signed", "identity_key": old, "new_key": new,
        "login": {"username": first["username"], "password": first["password"],
                  "login_key": access.login_public().hex()}}))
    report, _ = board.run_json(ROTATE_OFFLINE)
    assert report["login"]["password"] == site_login["password"]
    assert report["login"]["username"] == site_login["username"] == "ll-" + dev.hex()
    assert report["device_id"] == dev.hex() and report["public_key"] == new_pub.hex()   # signs with the new key
    assert report["loaded"] == []                                   # ECDH and broker_login unloaded after
    print("board32, library in ROMFS, %d B heap: key_rotated needs %d B above what the client held before and "
          "keeps %d B" % (BOARD_HEAP, report["peak"], report["kept"]))


ROTATE_LIVE = """
import json
from ledgerlink.core import cbor
from ledgerlink_client import device, mqtt, queue, transport

with open(INPUT + '/live.cbor', 'rb') as f:
    cfg = cbor.loads(f.read())
login = cfg['login']

def factory():
    return mqtt.MQTTClient(transport.open_socket('127.0.0.1', cfg['port']), login['username'], keepalive=30,
                           username=login['username'], password=login['password'])

flash = queue.MemoryStorage()
client = device.DeviceClient(cfg, factory, storage=flash)
out = {}
client.publish({'t': 1})
out['before'] = client.flush(30000)
new_key = bytes.fromhex(host_call('rotate'))      # the rotation is on the ledger and the site followed it
out['rotated_at_connects'] = client.stats['connects']
client.key_rotated(new_key)
client.publish({'t': 3})
out['after'] = client.flush(30000)
out['stats'] = client.stats
out['password'] = login['password']
client.close()
cfg['identity_key'] = new_key                     # the board restarts with what it stored
try:
    device.DeviceClient(dict(cfg, device_id=client.device_id), factory)
    out['unflagged'] = 'taken'
except ValueError as exc:
    out['unflagged'] = str(exc)
cfg.update(device_id=client.device_id, key_rotated=True)
restarted = device.DeviceClient(cfg, factory, storage=flash)
restarted.publish({'t': 4})
out['restarted'] = restarted.flush(30000)
out['restarted_refused'] = restarted.stats['refused']
restarted.close()
print(json.dumps(out))
"""


@pytest.mark.slow
def test_a_board_reconnects_with_its_new_password_after_a_key_rotation(stack, board, tmp_path):
    dev = Dev(stack)
    stack.register([dev.registration()])
    old = dev.login()
    new_priv = CRYPTO.generate_private_key()
    stack.follow_bans()

    def rotate() -> str:
        res = stack.ledger.submit(enc.rotate_key_tx(stack.chain_id, dev.priv, new_priv, int(time.time() * 1000)))
        assert res.get("status") == "committed", res
        deadline = time.monotonic() + 10
        while stack.login(dev.username) == old:
            assert time.monotonic() < deadline, "the site did not follow the rotation"
            stack.follow_bans()
            time.sleep(0.1)
        return new_priv.hex()

    (board.input / "live.cbor").write_bytes(cbor.dumps({
        "site": stack.site, "mode": "signed", "identity_key": dev.priv, "port": stack.broker_port,
        "chain_id": stack.chain_id, "validators": list(stack.validators),
        "gateway_keys": {stack.gateway_id: stack.public_key("gateway")},
        "login": dict(old, login_key=stack.access.login_public().hex())}))
    report, _ = board.run_json(ROTATE_LIVE, host_functions={"rotate": rotate}, timeout=180)
    assert report["before"] and report["after"], report             # a reading stored under each key
    assert report["password"] == stack.login(dev.username)["password"], "not the password the site set"
    assert report["stats"]["connects"] == report["rotated_at_connects"] + 1, report["stats"]
    assert report["stats"]["refused"] == 0, report["stats"]
    assert report["unflagged"] == "device_id does not belong to the identity key"
    assert report["restarted"] and report["restarted_refused"] == 0, report  # with its registered id and new key
    assert not Client(stack, dev.username, old).accepted            # the old password is refused
    again = Client(stack, dev.username, {"username": dev.username, "password": report["password"]})
    assert again.accepted
    again.close()


def test_a_cpython_device_logs_in_with_its_new_password_after_a_key_rotation(stack, tmp_path):
    """The CPython client (``Device.key_rotated``) runs the same computation: served under its old key, then
    under its new key and the new password once the site followed the rotation."""
    from ledgerlink.device.client import Device
    from ledgerlink.device.offline_queue import OfflineQueue

    dev = Dev(stack)
    stack.register([dev.registration()])
    old = dev.login()
    stack.follow_bans()
    refused: list = []
    device = Device(dev.core, OfflineQueue(str(tmp_path / "queue.db")), "127.0.0.1", stack.broker_port,
                    mode="signed", username=old["username"], password=old["password"], backoff_initial=0.1,
                    backoff_max=0.5, on_refusal=refused.append)
    device.start()
    try:
        device.publish_reading({"t": 1})
        assert device.wait_flushed(20) and device.connects == 1
        new_priv = CRYPTO.generate_private_key()
        res = stack.ledger.submit(enc.rotate_key_tx(stack.chain_id, dev.priv, new_priv, int(time.time() * 1000)))
        assert res.get("status") == "committed", res
        login = device.key_rotated(new_priv, stack.access.login_public())
        deadline = time.monotonic() + 10
        while stack.login(dev.username) == old:
            assert time.monotonic() < deadline, "the site did not follow the rotation"
            stack.follow_bans()
            time.sleep(0.1)
        assert login == stack.login(dev.username)
        # The gateway takes the new key from the rotation's block, which it follows on its own; a frame signed
        # under the new key before that is refused (bad signature). The site's follow loop above is not the
        # gateway's, so the reading waits one block interval more.
        time.sleep(2.0)
        device.publish_reading({"t": 2})
        assert device.wait_flushed(20), "the reading under the new key was not stored"
        assert device.connects == 2 and not refused, refused
    finally:
        device.stop()
    assert not Client(stack, dev.username, old).accepted
