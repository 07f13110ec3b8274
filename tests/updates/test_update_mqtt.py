"""A CPython device (ledgerlink.device.update) takes a release from the site's UpdateService over a real
mosquitto broker, reports the version it runs, and resumes a download after a restart."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from ledgerlink.device.client import Device
from ledgerlink.device.update import attach
from ledgerlink.protocol.codes import IMAGE_CONFIGURATION
from ledgerlink.tools.admin_release import UpdateService, write_release
from tests.device.test_client import Broker
from tests.updates.site import DEVICE_CLASS, ReleaseSite, offer_digest

SITE = "plant-7"
CONFIG = b'{"interval_s": 2, "alarm_c": 80}' * 64          # 2,048 bytes


@pytest.fixture
def broker(tmp_path):
    b = Broker(tmp_path)
    b.start()
    yield b
    b.stop()


def _wait(predicate, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def _device(site: ReleaseSite, broker: Broker, root: Path):
    device = Device.open(str(root / "dev"), SITE, "127.0.0.1", broker.port, site.chain_id, site.keys)
    updates = attach(device, DEVICE_CLASS, str(root / "dev" / "upd"), config_path=str(root / "dev" / "config.json"))
    return device, updates


def test_release_over_mqtt_installs_and_the_version_is_reported(broker, tmp_path):
    site = ReleaseSite()
    offer = site.release(CONFIG, IMAGE_CONFIGURATION, 4, version="c-4", chunk_size=256)
    write_release(tmp_path / "releases", offer, CONFIG)
    service = UpdateService("127.0.0.1", broker.port, SITE, tmp_path / "releases")
    service.start()
    device, updates = _device(site, broker, tmp_path)
    try:
        device.start()
        assert _wait(lambda: (tmp_path / "dev" / "config.json").exists()), "config not installed"
        assert (tmp_path / "dev" / "config.json").read_bytes() == CONFIG
        assert updates.status()[IMAGE_CONFIGURATION]["digest"] == offer_digest(offer)
        dev = device.core.device_id.hex()
        assert _wait(lambda: service.versions().get(dev, {}).get("config", {}).get("running") == 4)
        assert service.versions()[dev]["config"] == {"running": 4, "version": "c-4", "trial": True, "accepted": 4,
                                                     "latest": 4}
        device.on_receipt(type("Receipt", (), {"valid": True})())                 # the check-in
        assert updates.status()[IMAGE_CONFIGURATION]["trial"] is False
        assert _wait(lambda: service.versions()[dev]["config"]["trial"] is False)
    finally:
        updates.stop()
        device.stop()
        service.stop()


def test_a_restart_mid_download_resumes(broker, tmp_path):
    site = ReleaseSite()
    offer = site.release(CONFIG, IMAGE_CONFIGURATION, 5, chunk_size=64)          # 32 chunks
    write_release(tmp_path / "releases", offer, CONFIG)
    device, updates = _device(site, broker, tmp_path)
    agent = updates.agent
    agent.offer(offer)
    for index in range(10):
        agent.chunk(index, CONFIG[index * 64:(index + 1) * 64])
    updates.stop()
    device.stop()                                                                # the reset
    service = UpdateService("127.0.0.1", broker.port, SITE, tmp_path / "releases")
    service.start()
    device, updates = _device(site, broker, tmp_path)
    assert updates.agent.next_chunk() == 10
    try:
        device.start()
        assert _wait(lambda: (tmp_path / "dev" / "config.json").exists()), "config not installed"
        assert (tmp_path / "dev" / "config.json").read_bytes() == CONFIG
    finally:
        updates.stop()
        device.stop()
        service.stop()
