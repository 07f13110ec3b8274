"""``ledgerlink admin release`` against a running 4-node ledger: the offer it publishes is one a device
installs; a sequence not above the latest, and a key that is not a maintenance key, are refused."""

import os
import re

import pytest

from ledgerlink.ledger.cluster import LocalCluster
from ledgerlink.ledger.transport import ClusterConfig
from ledgerlink.core import cbor
from ledgerlink.protocol import update_agent as ua, update_check as uc, update_transport as ut
from ledgerlink.protocol.codes import IMAGE_CONFIGURATION
from ledgerlink.tools.admin_release import UpdateService, load_releases
from tests.test_admin import one_line_error, run

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ledger(tmp_path_factory):
    with LocalCluster(tmp_path_factory.mktemp("release-ledger") / "c", 4, log_level="WARNING") as c:
        yield c


def test_release_is_recorded_published_and_installed(ledger, tmp_path):
    cluster = ledger.config_path
    run("register", "--demo-key", tmp_path / "maint.key", "--role", "maintenance", "--name", "m-1",
        cluster=cluster, check=0)
    config = os.urandom(2500)
    (tmp_path / "cfg.bin").write_bytes(config)
    out_dir = tmp_path / "releases"
    _, out, _ = run("release", "--component", "config", "--class", "esp32-th", "--seq", "3", "--version", "c-3",
                    "--chunk-size", "512", "--maintenance-key", tmp_path / "maint.key", "--out", out_dir,
                    tmp_path / "cfg.bin", cluster=cluster, check=0)
    assert re.search(r"config release 3 for class 'esp32-th': manifest [0-9a-f]{64} \(2500 bytes in 5 chunks\)", out)
    assert "offer checked as a device of class 'esp32-th' checks it" in out
    releases = load_releases(out_dir)
    assert len(releases) == 1 and releases[0].payload == config

    trusted = ClusterConfig.load(cluster)
    (tmp_path / "dev").mkdir()
    files = ua.Files()
    agent = ua.UpdateAgent(str(tmp_path / "dev" / "upd"), "esp32-th", trusted.chain_id, list(trusted.validators),
                           [ua.ConfigTarget(files, str(tmp_path / "dev" / "config"))], files)
    agent.provision()
    agent.boot(0)
    client = ut.UpdateClient(agent)
    service = UpdateService("127.0.0.1", 1, "s", out_dir)          # its publisher, without a broker
    service.reload()
    publisher = service.publisher
    rc, _, err = run("versions", "--releases", out_dir, cluster=cluster)
    assert rc == 2 and "no device versions" in one_line_error(err)
    publisher.handle(b"d" * 16, client.status())
    service.write_versions()
    _, out, _ = run("versions", "--releases", out_dir, cluster=cluster, check=0)
    assert "device %s class 'esp32-th'" % ("64" * 16) in out
    assert "config      runs as deployed; latest 3 (c-3) on the ledger: BEHIND" in out
    queue = [client.status()]
    while queue:
        for answer in publisher.handle(b"d" * 16, queue.pop(0)):
            queue.extend(client.handle(answer, now_ms=0))
    assert (tmp_path / "dev" / "config").read_bytes() == config
    assert agent.running()[IMAGE_CONFIGURATION]["version"] == "c-3"
    publisher.handle(b"d" * 16, client.status())
    service.write_versions()
    _, out, _ = run("versions", "--releases", out_dir, cluster=cluster, check=0)
    assert "config      runs 3 (c-3), on trial; latest 3 (c-3) on the ledger: up to date" in out
    assert re.search(r"latest releases: proof verified against header \d+", out)

    rc, _, err = run("release", "--component", "config", "--class", "esp32-th", "--seq", "3",
                     "--maintenance-key", tmp_path / "maint.key", "--out", out_dir, tmp_path / "cfg.bin",
                     cluster=cluster)
    assert rc == 1 and "code 21 invalid-field" in one_line_error(err)
    rc, _, err = run("release", "--component", "config", "--class", "esp32-th", "--seq", "4",
                     "--maintenance-key", ledger.data_dir / "keys" / "admin.key", "--out", out_dir,
                     tmp_path / "cfg.bin", cluster=cluster)
    assert rc == 1 and "code 22 not-authorized" in one_line_error(err)
    rc, _, err = run("release", "--component", "config", "--class", "esp32-th", "--seq", "4", "--chunk-size", "9",
                     "--maintenance-key", tmp_path / "maint.key", tmp_path / "cfg.bin", cluster=cluster)
    assert rc == 2 and "chunk size" in one_line_error(err)
    assert len(load_releases(out_dir)) == 1


def test_the_service_takes_fresh_proofs_and_stops_offering_a_banned_keys_release(ledger, tmp_path):
    from ledgerlink.ledger.client import LedgerClient

    cluster = ledger.config_path
    _, out, _ = run("register", "--demo-key", tmp_path / "maint.key", "--role", "maintenance", "--name", "m-2",
                    cluster=cluster, check=0)
    maintenance = re.search(r"registered device ([0-9a-f]{32})", out).group(1)
    (tmp_path / "cfg.bin").write_bytes(b'{"a": 1}')
    out_dir = tmp_path / "releases"
    run("release", "--component", "config", "--class", "esp32-fresh", "--seq", "1", "--maintenance-key",
        tmp_path / "maint.key", "--out", out_dir, tmp_path / "cfg.bin", cluster=cluster, check=0)
    status = ut.encode_status("esp32-fresh", {})
    with LedgerClient(cluster) as client:
        fresh = UpdateService("127.0.0.1", 1, "s", out_dir, ledger=client)
        fresh.reload()
        offered = fresh.publisher.handle(b"d" * 16, status)
        assert len(offered) == 1
        trusted = ClusterConfig.load(cluster)
        uc.check_offer(cbor.loads(offered[0])[1], trusted.chain_id, list(trusted.validators), "esp32-fresh")
        run("ban", maintenance, "--reason", "key leaked", cluster=cluster, check=0)
        fresh._fresh.clear()
        assert fresh.publisher.handle(b"d" * 16, status) == []         # a device would refuse it now
    stored = UpdateService("127.0.0.1", 1, "s", out_dir)                # without the ledger: the proofs of the release
    stored.reload()
    assert len(stored.publisher.handle(b"d" * 16, status)) == 1
