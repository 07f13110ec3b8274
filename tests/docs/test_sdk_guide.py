"""docs/sdk.md's examples, run as written against a real local site (mosquitto, a 4-node ledger, the gateway):
the CPython device app in a process of its own, the MicroPython main.py on board32 with its own sockets."""

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ledgerlink.core.backend import get_backend
from ledgerlink.device.core import ROLE_SENSOR, DeviceCore, MemoryCounter, SequenceCounter
from ledgerlink.device.keystore import FileKeystore
from ledgerlink.ledger.state import encoding as enc
from ledgerlink.tools.board_runtime import Board
from ledgerlink.tools.stack import Stack
from tests.conftest import PROJECT_ROOT
from tests.mqtt_helpers import Verified

pytestmark = pytest.mark.slow

SITE = "sdkdoc"
GUIDE = PROJECT_ROOT / "docs" / "sdk.md"


def example(name: str) -> str:
    """The ```python block of docs/sdk.md whose first line is ``# name``."""
    blocks = re.findall(r"```python\n# (\S+)\n(.*?)```", GUIDE.read_text(), re.S)
    found = [code for title, code in blocks if title == name]
    assert len(found) == 1, "docs/sdk.md has %d examples named %s" % (len(found), name)
    return found[0]


def test_guide_names_its_examples():
    assert [t for t, _ in re.findall(r"```python\n# (\S+)\n(.*?)```", GUIDE.read_text(), re.S)] == \
        ["device_app.py", "main.py"]


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    s = Stack(tmp_path_factory.mktemp("sdkdoc") / "site", site=SITE, broker="mosquitto")
    s.start()
    yield s
    s.stop()


def provisioned(stack: Stack, folder: Path, priv: bytes) -> bytes:
    """Register the key on the ledger and write what `ledgerlink provision` leaves a device; its device id."""
    crypto = get_backend("cpython")
    core = DeviceCore(priv, SITE, SequenceCounter(MemoryCounter()), stack.chain_id, stack.validators)
    stack.register([core.registration_request(int(time.time() * 1000), ROLE_SENSOR, {"name": folder.name}).payload])
    device_id = enc.device_id(crypto.public_key(priv, True))
    login = stack.device_login(device_id)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "ledgerlink.mqtt.json").write_text(json.dumps({k: login[k] for k in ("username", "password")}))
    (folder / "ledgerlink.json").write_text(json.dumps({
        "broker": {"host": "127.0.0.1", "port": stack.broker_port}, "site": SITE, "chain_id": stack.chain_id,
        "ca_public": stack.public_key("gw-ca").hex(), "validator_keys": [k.hex() for k in stack.validators],
        "mode": "session", "readings": 2, "period_s": 1}))
    return device_id


def test_cpython_device_app_sends_simulated_readings_and_checks_their_receipts(stack, tmp_path):
    folder = tmp_path / "pi"
    (folder / "state").mkdir(parents=True, mode=0o700)
    priv = FileKeystore(str(folder / "state" / "identity.key")).create()
    device_id = provisioned(stack, folder, priv)
    (tmp_path / "device_app.py").write_text(example("device_app.py"))
    consumer = Verified(stack.broker_port, SITE, "sdk-guide-app", stack.consumer_login())
    try:
        run = subprocess.run([sys.executable, str(tmp_path / "device_app.py"), str(folder), "3"],
                             capture_output=True, text=True, timeout=240)
        time.sleep(0.5)
    finally:
        consumer.close()
    assert run.returncode == 0, run.stdout + run.stderr
    assert "device %s, no BME280: readings are SIMULATED" % device_id.hex() in run.stdout
    assert len(re.findall(r"receipt seq \d+: valid, block \d+", run.stdout)) >= 3, run.stdout
    assert "INVALID" not in run.stdout and "refused" not in run.stdout
    assert re.search(r"stored: True, receipts valid \d+, invalid 0, still awaited 0", run.stdout)
    mine = [r[4] for r in consumer.readings if r[1] == device_id]
    assert [m["t_cC"] for m in mine if "t_cC" in m] == [2150, 2151, 2152]
    assert all(m["simulated"] is True for m in mine if "t_cC" in m)


def test_micropython_main_py_opens_its_session_and_checks_its_receipts(stack, tmp_path):
    priv = get_backend("cpython").generate_private_key()
    folder = tmp_path / "flash"
    provisioned(stack, folder, priv)
    (folder / "ledgerlink.key").write_text(priv.hex())
    files = {p.name: p for p in folder.iterdir()}
    with Board("files", heap_bytes=300_000, files=files, workdir=tmp_path / "board") as board:
        # the board's flash is its working directory
        result = board.run("import os\nos.chdir(INPUT)\n" + example("main.py"), timeout=300)
    assert "no BME280: readings are SIMULATED" in result.stdout
    stats = json.loads(result.stdout.strip().splitlines()[-1])
    assert stats["sessions_opened"] == 1 and stats["receipts_invalid"] == 0 and stats["refused"] == 0
    assert stats["receipts_valid"] >= 2, stats
