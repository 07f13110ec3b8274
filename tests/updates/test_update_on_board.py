"""The same update code on board32 (MicroPython with its collector on, at a board's heap), from .mpy files
and from ROMFS: installs of a config, an app library (.mpy set in A/B slots) and ESP32 firmware (OTA
partitions of a fake ``esp32.Partition``: board32 has no flash partitions), each refusal with its reason,
rollback without a check-in, and nothing of the update code loaded by a client that does not use it."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from ledgerlink.core import cbor
from ledgerlink.ledger.state.codes import RecordKind
from ledgerlink.protocol import update_check as uc, update_manifest as um
from ledgerlink.protocol.codes import IMAGE_APP_LIBRARY, IMAGE_CONFIGURATION, IMAGE_FIRMWARE
from ledgerlink.tools.board_runtime import Board
from ledgerlink.tools.deploy import load_profile
from tests.updates.site import DEVICE_CLASS, ReleaseSite

pytestmark = pytest.mark.slow               # each run starts board32 and checks ECDSA signatures at its speed

CONFIG = b'{"interval_s": 7}' * 30
APP_SET = cbor.dumps({"sensor_app.py": b"VALUE = 2\n", "drivers/extra.py": b"X = 1\n"})
FIRMWARE = bytes(range(256)) * 40 + b"end"          # 10,243 bytes: three 4 KB blocks


def _cases(tmp_path: Path) -> dict[str, Path]:
    """The input files of the board program: the cases, and the payloads the publisher reads."""
    site = ReleaseSite()
    lying = cbor.loads(site.release(CONFIG, IMAGE_CONFIGURATION, 9))
    lying[3][1][1][3] = lying[3][1][1][3][:2]                           # a header with 2 of 4 signatures
    m = site.manifest(CONFIG, IMAGE_CONFIGURATION, 10)
    forged = um.sign(m, site.net["sensor"].priv, site.net["maintenance"].id, "cpython")
    assert site.commit([site.record_tx(forged, m.size)]) == [0]
    forged_offer = uc.encode_offer(forged, site.proof(RecordKind.DEVICE, site.net["maintenance"].id),
                                   site.proof(RecordKind.FIRMWARE, um.manifest_digest(m.encode())))
    refusals = [
        ["wrong-key", forged_offer, CONFIG, uc.UPDATE_BAD_SIGNATURE],
        ["not-maintenance", site.release(CONFIG, IMAGE_CONFIGURATION, 11, signer="admin", on_ledger=False), CONFIG,
         uc.UPDATE_UNTRUSTED_SIGNER],
        ["lying-proof", cbor.dumps(lying), CONFIG, uc.UPDATE_BAD_PROOF],
        ["not-on-ledger", site.release(CONFIG, IMAGE_CONFIGURATION, 12, on_ledger=False), CONFIG,
         uc.UPDATE_NOT_ON_LEDGER],
        ["other-class", site.release(CONFIG, IMAGE_CONFIGURATION, 13, device_class="actuator-v1"), CONFIG,
         uc.UPDATE_WRONG_CLASS],
        ["digest", site.release(CONFIG, IMAGE_CONFIGURATION, 14), CONFIG[:-1] + b"?", uc.UPDATE_DIGEST],
        ["truncated", site.release(CONFIG, IMAGE_CONFIGURATION, 15), CONFIG[:-20], uc.UPDATE_SIZE],
    ]
    installs = [
        ["config", site.release(CONFIG, IMAGE_CONFIGURATION, 20, version="cfg-20")],
        ["app", site.release(APP_SET, IMAGE_APP_LIBRARY, 21, chunk_size=128)],
        ["firmware", site.release(FIRMWARE, IMAGE_FIRMWARE, 22, chunk_size=1024)],
    ]
    for name, payload in (("config", CONFIG), ("app", APP_SET), ("firmware", FIRMWARE)):
        (tmp_path / (name + ".payload")).write_bytes(payload)
    path = tmp_path / "cases.cbor"
    path.write_bytes(cbor.dumps({"chain": site.chain_id, "validators": site.keys, "class": DEVICE_CLASS,
                                 "refusals": refusals, "installs": installs}))
    return {"cases.cbor": path, **{n + ".payload": tmp_path / (n + ".payload") for n in ("config", "app", "firmware")}}


PROGRAM = r"""
import gc, json, os, sys
from ledgerlink.core import cbor
from ledgerlink.protocol import update_agent as ua, update_check as uc, update_transport as ut
from ledgerlink_client import update as bu

data = cbor.loads(open(INPUT + '/cases.cbor', 'rb').read())
root = INPUT + '/dev'
os.mkdir(root)
with open(root + '/config.json', 'wb') as f:
    f.write(b'{"interval_s": 60}')


class FakePartition:
    # esp32.Partition's OTA interface over RAM: two app slots ota_0 (running at first) and ota_1
    RUNNING = 'running'
    TYPE_APP = 0
    blocks = {0: {}, 1: {}}
    boot = [0]
    running = [0]
    valid = [True]

    def __init__(self, which, slot=None):
        self.slot = FakePartition.running[0] if which == FakePartition.RUNNING else slot

    @classmethod
    def find(cls, type, label):
        return [cls(None, int(label[-1]))]

    def get_next_update(self):
        return FakePartition(None, 1 - self.slot)

    def info(self):
        return (0, 0, 0, 0, 'ota_%d' % self.slot, False)

    def _file(self):
        return root + '/ota_%d.bin' % self.slot             # the partition's flash, as a file

    def ioctl(self, op, block):
        assert op == 6 and self.slot != FakePartition.running[0]
        for offset in range(0, bu.BLOCK, 256):                 # erased flash reads 0xff
            self.writeblocks(block, b'\xff' * 256, offset)

    def writeblocks(self, block, buf, offset):
        assert offset + len(buf) <= bu.BLOCK and self.slot != FakePartition.running[0]
        with open(self._file(), 'r+b' if FakePartition.blocks[self.slot] else 'wb') as f:
            f.seek(block * bu.BLOCK + offset)
            f.write(buf)
        FakePartition.blocks[self.slot][block] = True

    def readblocks(self, block, buf, offset):
        with open(self._file(), 'rb') as f:
            f.seek(block * bu.BLOCK + offset)
            f.readinto(buf)

    def set_boot(self):
        FakePartition.boot[0] = self.slot

    @classmethod
    def mark_app_valid_cancel_rollback(cls):
        cls.valid[0] = True


def make_agent():
    files = ua.Files()
    targets = [ua.ConfigTarget(files, root + '/config.json'),
               ua.AppTarget(files, root + '/app', lambda p: bu.unpack_mpy_set(p, files)),
               bu.FirmwareTarget(files, root + '/upd/fw.progress', FakePartition)]
    agent = ua.UpdateAgent(root + '/upd', data['class'], data['chain'], data['validators'], targets, files)
    agent.provision()
    agent.boot(0)
    return agent


def running(agent):
    return dict((str(c), [e['sequence'], e['version'], e['trial']]) for c, e in agent.running().items())


out = {'refusals': {}, 'installs': {}}
agent = make_agent()
for name, offer, payload, code in data['refusals']:
    gc.collect()
    before = running(agent)
    got = None
    try:
        m = agent.offer(offer)
        while agent.next_chunk() is not None:
            i = agent.next_chunk()
            agent.chunk(i, payload[i * m.chunk_size:(i + 1) * m.chunk_size])
        agent.finish(0)
    except uc.UpdateRefused as exc:
        got = exc.code
    except Exception as exc:
        got = repr(exc)
    out['refusals'][name] = [got, running(agent) == before, open(root + '/config.json', 'rb').read().decode()]

publisher = ut.UpdatePublisher()
for name, offer in data['installs']:
    publisher.add(ut.Release(offer, path=INPUT + '/' + name + '.payload'))
data['installs'] = None
client = ut.UpdateClient(agent)
queue = [client.status()]
while queue:
    for answer in publisher.handle(b'd' * 16, queue.pop(0)):
        gc.collect()
        queue.extend(client.handle(answer, 0))
out['after-install'] = running(agent)
out['refused-in-transport'] = [[c, d.hex()] for c, d in client.refusals]
out['config'] = open(root + '/config.json', 'rb').read().decode()
out['app-path'] = bu.app_path(root + '/upd', root + '/app')
sys.path.insert(0, out['app-path'])
import sensor_app
out['app-value'] = sensor_app.VALUE
out['fw-boot'] = FakePartition.boot[0]
out['fw-written'] = os.stat(root + '/ota_1.bin')[6]
with open(root + '/ota_1.bin', 'rb') as f, open(INPUT + '/firmware.payload', 'rb') as g:
    out['fw-same'] = all(f.read(1024) == g.read(1024) for _ in range(10)) and f.read(3) == g.read()
FakePartition.running[0] = FakePartition.boot[0]          # the reset into the new firmware
FakePartition.valid[0] = False
second = make_agent()                                      # first start of the new versions: on trial
out['first-start'] = running(second)
third = make_agent()                                       # a second start without a check-in: rolled back
out['second-start'] = running(third)
out['after-rollback'] = [FakePartition.boot[0], bu.app_path(root + '/upd', root + '/app'),
                         open(root + '/config.json', 'rb').read().decode()]
print(json.dumps(out))
"""


@pytest.mark.parametrize("layout", ["files", "romfs"])
def test_updates_on_board32(tmp_path, layout):
    board_name = {"files": "picow", "romfs": "esp32"}[layout]
    heap = load_profile(board_name)["memory"]["heap_bytes"]
    with Board(layout, heap_bytes=heap, files=_cases(tmp_path), workdir=tmp_path / "b") as board:
        out, result = board.run_json_result(PROGRAM, timeout=300)
    expected = {"wrong-key": uc.UPDATE_BAD_SIGNATURE, "not-maintenance": uc.UPDATE_UNTRUSTED_SIGNER,
                "lying-proof": uc.UPDATE_BAD_PROOF, "not-on-ledger": uc.UPDATE_NOT_ON_LEDGER,
                "other-class": uc.UPDATE_WRONG_CLASS, "digest": uc.UPDATE_DIGEST, "truncated": uc.UPDATE_SIZE}
    for name, code in expected.items():
        assert out["refusals"][name] == [code, True, '{"interval_s": 60}'], name
    assert out["after-install"] == {"2": [20, "cfg-20", True], "3": [21, "v21", True], "1": [22, "v22", True]}
    assert out["refused-in-transport"] == []
    assert out["config"] == CONFIG.decode()
    assert out["app-value"] == 2 and out["app-path"].endswith("/app.1.d")
    assert out["fw-boot"] == 1 and out["fw-written"] == 3 * 4096 and out["fw-same"]
    assert out["first-start"] == out["after-install"]
    assert out["second-start"] == {"2": [20, None, False], "3": [21, None, False], "1": [22, None, False]}
    assert out["after-rollback"] == [0, None, '{"interval_s": 60}']
    assert result.peak_live < heap


def test_older_release_is_refused_on_the_board(tmp_path):
    """The replay of an earlier genuine release after a newer one (the rollback attack), on board32."""
    site = ReleaseSite()
    earlier = site.release(CONFIG[:50], IMAGE_CONFIGURATION, 1)
    newer = site.release(CONFIG, IMAGE_CONFIGURATION, 2)
    path = tmp_path / "cases.cbor"
    path.write_bytes(cbor.dumps({"chain": site.chain_id, "validators": site.keys, "class": DEVICE_CLASS,
                                 "refusals": [["newer", newer, CONFIG, 0], ["older", earlier, CONFIG[:50], 0]],
                                 "installs": []}))
    program = PROGRAM.split("publisher = ut.UpdatePublisher()")[0] + "print(json.dumps(out))\n"
    with Board("romfs", files={"cases.cbor": path}, workdir=tmp_path / "b") as board:
        out, _ = board.run_json_result(program, timeout=300)
    assert out["refusals"]["newer"][0] is None and out["refusals"]["newer"][2] == CONFIG.decode()
    assert out["refusals"]["older"] == [uc.UPDATE_STALE_SEQUENCE, True, CONFIG.decode()]


def test_a_client_without_updates_loads_none_of_the_update_code(tmp_path):
    program = """
import json, sys
from ledgerlink_client import device
print(json.dumps(sorted(m for m in sys.modules if 'update' in m)))
"""
    with Board("romfs", workdir=tmp_path / "b") as board:
        out, _ = board.run_json_result(program)
    assert out == []


def measure(layout: str, low: int = 48 * 1024, high: int = 256 * 1024) -> tuple[int, int]:
    """(peak live heap of the whole program at the layout's board heap, least heap it completes in, to 1 KB)."""
    import tempfile

    heap = load_profile({"files": "picow", "romfs": "esp32"}[layout])["memory"]["heap_bytes"]
    with tempfile.TemporaryDirectory() as tmp:
        files = _cases(Path(tmp))
        peak = None
        while high - low > 1024:
            mid = (low + high) // 2
            with Board(layout, heap_bytes=mid, files=files, workdir=Path(tmp) / ("b%d" % mid)) as board:
                try:
                    board.run_json_result(PROGRAM, timeout=300)
                    high = mid
                except Exception:       # noqa: BLE001 - MemoryError on the board: more heap needed
                    low = mid
        with Board(layout, heap_bytes=heap, files=files, workdir=Path(tmp) / "full") as board:
            _, result = board.run_json_result(PROGRAM, timeout=300)
            peak = result.peak_live
    return peak, high


if __name__ == "__main__":
    for layout in ("files", "romfs"):
        peak, least = measure(layout)
        print("board32 %-5s update program (3 installs, 7 refusals, rollback): peak live heap %d B, "
              "least heap %d KB" % (layout, peak, least // 1024))
