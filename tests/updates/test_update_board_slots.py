"""An app library (.mpy set in A/B slots) and ESP32 firmware (OTA partitions of a fake ``esp32.Partition``:
board32 has no flash partitions) taken over MQTT from a real mosquitto by the board client at the board
issue's target: library in ROMFS, 64 KB of heap (the fake partition's code is on that heap too).
``python3 -m tests.updates.test_update_board_slots`` prints the least heap each takes."""

from __future__ import annotations

import hashlib

import pytest

from ledgerlink.core import cbor
from ledgerlink.protocol.codes import IMAGE_APP_LIBRARY, IMAGE_FIRMWARE
from tests.updates.test_update_board_mqtt import ROMFS_TARGET, run_board
from tests.updates.test_update_on_board import PROGRAM as CASES_PROGRAM

pytestmark = pytest.mark.slow

# larger than the heap a 64 KB board has free: unpacked a file at a time, a block at a time
APP_SET = cbor.dumps({"sensor_app.py": b"VALUE = 3\n" + bytes(range(256)) * 40,
                      "drivers/extra.py": b"X = 1\n" + bytes(255 - i % 256 for i in range(9000))})
FIRMWARE = bytes(range(256)) * 48 + b"end"          # 12,291 bytes: four 4 KB blocks
FAKE_PARTITION = CASES_PROGRAM[CASES_PROGRAM.index("class FakePartition"):CASES_PROGRAM.index("def make_agent")].replace("%", "%%")

PROGRAM = r"""
import hashlib, json, os
from ledgerlink_client import device, mqtt, transport, update
bu = update
root = INPUT + '/dev'
if 'dev' not in os.listdir(INPUT):
    os.mkdir(root)

%(fake)s

def factory():
    return mqtt.MQTTClient(transport.open_stream('127.0.0.1', %%(port)d, None), 'll-board', keepalive=30)

def digest(path, size=None):
    h = hashlib.sha256()
    seen = 0
    with open(path, 'rb') as f:
        block = f.read(256)
        while block and (size is None or seen < size):
            h.update(block if size is None else block[:size - seen])
            seen += len(block)
            block = f.read(256)
    return h.digest().hex()

setup = json.loads(open(INPUT + '/setup.json').read())
cfg = {'site': %%(site)r, 'mode': 'signed', 'identity_key': bytes.fromhex(setup['key']),
       'chain_id': setup['chain'], 'validators': [bytes.fromhex(k) for k in setup['validators']]}
client = device.DeviceClient(cfg, factory)
u = update.attach(client, %%(cls)r, root + '/upd', %(targets)s)
%(before)s
for i in range(900):
    client.step(50)
    if u._client_state.get('refusals') or u.reboot_due %(stop)s:
        break
out = {'reboot_due': u.reboot_due, 'refusals': u._client_state.get('refusals'),
       'running': dict((str(c), [e['sequence'], (e['digest'] or b'').hex(), e['trial']]) for c, e in u.running().items())}
%(report)s
client.close()
print(json.dumps(out))
"""

APP = {"fake": "", "targets": "app_prefix=root + '/app'", "before": "", "stop": ""}
APP_REPORT = """
folder = root + '/app.1.d'
out['files'] = {'sensor_app.py': digest(folder + '/sensor_app.py'), 'drivers/extra.py': digest(folder + '/drivers/extra.py')}
"""

FIRMWARE_REPORT = """
out['boot'] = FakePartition.boot[0]
out['image'] = digest(root + '/ota_1.bin', %d)
""" % len(FIRMWARE)


def _running(out, component, offer_digest):
    assert out["refusals"] == [] and out["reboot_due"] is True
    sequence, digest, trial = out["running"][str(component)]
    assert sequence == 3 and trial is True and digest == offer_digest.hex()


def test_board_takes_an_app_library_over_mqtt_at_the_romfs_target(tmp_path):
    from tests.updates.site import offer_digest

    program = PROGRAM % dict(APP, report=APP_REPORT)
    out, result, versions, offer, _ = run_board(tmp_path, ROMFS_TARGET, lambda p, v: True, program, APP_SET,
                                                IMAGE_APP_LIBRARY, chunk_size=512)
    _running(out, IMAGE_APP_LIBRARY, offer_digest(offer))
    entries = cbor.loads(APP_SET)
    assert out["files"] == {name: hashlib.sha256(data).hexdigest() for name, data in entries.items()}
    assert result.peak_live < result.heap_bytes


def test_board_takes_firmware_over_mqtt_at_the_romfs_target(tmp_path):
    from tests.updates.site import offer_digest

    program = PROGRAM % {"fake": FAKE_PARTITION, "targets": "firmware=True, partition=FakePartition",
                         "report": FIRMWARE_REPORT, "before": "", "stop": ""}
    out, result, versions, offer, _ = run_board(tmp_path, ROMFS_TARGET, lambda p, v: True, program, FIRMWARE,
                                                IMAGE_FIRMWARE, chunk_size=1024)
    _running(out, IMAGE_FIRMWARE, offer_digest(offer))
    assert out["boot"] == 1 and out["image"] == hashlib.sha256(FIRMWARE).hexdigest()
    assert result.peak_live < result.heap_bytes


# a reset in the middle of the download: the first run ends once 2 KB of the set are in the slot file
CUT = {"stop": "or _size(root + '/app.1') >= 2048", "before": """
def _size(path):
    try:
        return os.stat(path)[6]
    except OSError:
        return 0
""", "report": "out['slot'] = _size(root + '/app.1')"}
RESUME = {"before": """
from ledgerlink.core import cbor
asked = []
_send = update._UpdatingMQTT._send
def recorded(self, messages):
    asked.extend(cbor.loads(m)[2] for m in messages if m[1] == 2)     # [2, digest, first chunk, count]
    return _send(self, messages)
update._UpdatingMQTT._send = recorded
slot = os.stat(root + '/app.1')[6]
import sys
kept = sorted(m for m in sys.modules if 'update_' in m)        # after the resume at attach
""", "report": APP_REPORT + "out['slot'] = slot\nout['asked'] = asked\nout['kept'] = kept"}


def test_a_board_reset_in_a_download_resumes_it_at_the_romfs_target(tmp_path):
    """The second start checks the stored offer again (its proofs against 2f+1) and asks only for the chunks
    it lacks."""
    from tests.updates.site import offer_digest

    programs = [PROGRAM % dict(APP, **CUT), PROGRAM % dict(APP, **RESUME)]
    out, result, versions, offer, _ = run_board(tmp_path, ROMFS_TARGET, lambda p, v: True, programs, APP_SET,
                                                IMAGE_APP_LIBRARY, chunk_size=512)
    _running(out, IMAGE_APP_LIBRARY, offer_digest(offer))
    entries = cbor.loads(APP_SET)
    assert out["files"] == {name: hashlib.sha256(data).hexdigest() for name, data in entries.items()}
    assert out["slot"] >= 2048 and out["slot"] % 512 == 0
    assert out["asked"][0] == out["slot"] // 512 and min(out["asked"]) == out["asked"][0]
    assert out["kept"] == ["ledgerlink.protocol.update_manifest"]         # the download's manifest, held


if __name__ == "__main__":
    import tempfile
    from pathlib import Path

    cases = {"an app library (%d B .mpy set)" % len(APP_SET): (PROGRAM % dict(APP, report=APP_REPORT), APP_SET,
                                                             IMAGE_APP_LIBRARY),
             "a firmware image (%d B)" % len(FIRMWARE): (PROGRAM % {"fake": FAKE_PARTITION, "report": FIRMWARE_REPORT,
                                                                  "targets": "firmware=True, partition=FakePartition",
                                                                  "before": "", "stop": ""}, FIRMWARE, IMAGE_FIRMWARE)}
    for name, (program, payload, component) in cases.items():
        low, high = 40 * 1024, 110 * 1024
        while high - low > 256:
            mid = (low + high) // 2
            with tempfile.TemporaryDirectory() as tmp:
                try:
                    ok = run_board(Path(tmp), mid, lambda p, v: True, program, payload, component,
                                   chunk_size=1024)[0]["reboot_due"]
                except Exception:       # noqa: BLE001 - MemoryError on the board
                    ok = False
            low, high = (low, mid) if ok else (mid, high)
        print("board32 romfs: a board client installs %s over MQTT (1 KB chunks) at %d B heap, not at %d B"
              % (name, high, low))
