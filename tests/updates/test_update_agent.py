"""The device's update checks and installs (CPython): each refusal has its reason and leaves the running
version as it was; power loss at any write step leaves the old or the new version, never a mix."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from ledgerlink.core import cbor
from ledgerlink.ledger.state.codes import RecordKind
from ledgerlink.protocol import update_agent as ua, update_check as uc, update_manifest as um
from ledgerlink.protocol.codes import IMAGE_APP_LIBRARY, IMAGE_CONFIGURATION, IMAGE_FIRMWARE
from tests.updates.site import DEVICE_CLASS, ReleaseSite, install, offer_digest

OLD_CONFIG = b'{"interval_s": 10}'
NEW_CONFIG = b'{"interval_s": 5, "threshold": 21.5}' * 20          # 760 bytes: 3 chunks of 256
APP_V2 = bytes(range(256)) * 9 + b"tail"


@pytest.fixture
def site() -> ReleaseSite:
    return ReleaseSite()


def make_agent(site: ReleaseSite, root: Path, files: ua.Files | None = None, device_class: str = DEVICE_CLASS,
               provision: bool = True) -> ua.UpdateAgent:
    files = files or ua.Files()
    targets = [ua.ConfigTarget(files, str(root / "config.json")), ua.AppTarget(files, str(root / "app"))]
    agent = ua.UpdateAgent(str(root / "upd"), device_class, site.chain_id, site.keys, targets, files, "cpython")
    if provision:
        agent.provision()
    return agent


@pytest.fixture
def device(tmp_path: Path, site: ReleaseSite) -> ua.UpdateAgent:
    (tmp_path / "config.json").write_bytes(OLD_CONFIG)
    agent = make_agent(site, tmp_path)
    agent.boot(0)
    return agent


def refused(code: int, agent: ua.UpdateAgent, offer: bytes, payload: bytes) -> uc.UpdateRefused:
    before = agent.running()
    root = Path(agent.dir).parent
    config = (root / "config.json").read_bytes()
    with pytest.raises(uc.UpdateRefused) as info:
        install(agent, offer, payload)
    assert info.value.code == code, info.value
    assert agent.running() == before
    assert (root / "config.json").read_bytes() == config
    assert not (root / "config.json.new").exists() and not Path(agent.dir, "offer").exists()
    fresh = make_agent_like(agent)
    assert fresh.boot(0) == before
    return info.value


def make_agent_like(agent: ua.UpdateAgent) -> ua.UpdateAgent:
    """The same device after a restart."""
    files = ua.Files()
    targets = [ua.ConfigTarget(files, agent.targets[IMAGE_CONFIGURATION].path),
               ua.AppTarget(files, agent.targets[IMAGE_APP_LIBRARY].prefix)]
    return ua.UpdateAgent(agent.dir, agent.device_class, agent.chain_id, agent.validator_keys, targets, files,
                          "cpython")


def test_config_update_installs_and_keeps_the_old_one_until_check_in(site, device, tmp_path):
    seq = 100
    offer = site.release(NEW_CONFIG, IMAGE_CONFIGURATION, seq, version="cfg-2")
    entry = install(device, offer, NEW_CONFIG, now_ms=1000)
    assert entry["sequence"] == seq and entry["version"] == "cfg-2" and entry["trial"]
    assert (tmp_path / "config.json").read_bytes() == NEW_CONFIG
    assert (tmp_path / "config.json.old").read_bytes() == OLD_CONFIG
    device.checked_in()
    assert not (tmp_path / "config.json.old").exists()
    assert make_agent_like(device).boot(0)[IMAGE_CONFIGURATION] == dict(entry, trial=False)


def test_wrong_key(site, device):
    site.register_maintenance("maintenance-2")
    payload = NEW_CONFIG
    assert refused(uc.UPDATE_UNTRUSTED_SIGNER, device, site.release(payload, IMAGE_CONFIGURATION, 200,
                                                                     signer="admin", on_ledger=False), payload)
    # a manifest signed by another key under the maintenance key's id, recorded by the real maintenance key
    m = site.manifest(payload, IMAGE_CONFIGURATION, 201)
    forged = um.sign(m, site.net["sensor"].priv, site.net["maintenance"].id, "cpython")
    assert site.commit([site.record_tx(forged, m.size)]) == [0]
    offer = uc.encode_offer(forged, site.proof(RecordKind.DEVICE, site.net["maintenance"].id),
                            site.proof(RecordKind.FIRMWARE, um.manifest_digest(m.encode())))
    assert refused(uc.UPDATE_BAD_SIGNATURE, device, offer, payload).code == uc.UPDATE_BAD_SIGNATURE
    # a second, registered maintenance key is trusted the same way
    assert install(device, site.release(payload, IMAGE_CONFIGURATION, 202, signer="maintenance-2"),
                   payload)["sequence"] == 202


def test_older_sequence_is_refused_and_never_lowered(site, device):
    payload = b'{"interval_s": 1}'
    earlier = site.release(payload, IMAGE_CONFIGURATION, 299)      # a genuine earlier release, replayed
    install(device, site.release(NEW_CONFIG, IMAGE_CONFIGURATION, 300), NEW_CONFIG)
    device.checked_in()
    refused(uc.UPDATE_STALE_SEQUENCE, device, earlier, payload)


def test_the_ledger_refuses_a_release_not_above_the_latest(site):
    m = site.manifest(b"x", IMAGE_CONFIGURATION, 1, device_class="other-class")
    first = um.sign(m, site.net["maintenance"].priv, site.net["maintenance"].id, "cpython")
    assert site.commit([site.record_tx(first, 1)]) == [0]
    again = um.sign(site.manifest(b"y", IMAGE_CONFIGURATION, 1, device_class="other-class"),
                    site.net["maintenance"].priv, site.net["maintenance"].id, "cpython")
    assert site.commit([site.record_tx(again, 1)]) == [21]              # invalid field: sequence not above
    latest = site.state.get_record(RecordKind.FIRMWARE_LATEST, [IMAGE_CONFIGURATION, "other-class"])
    assert latest[1] == um.manifest_digest(m.encode()) and latest[4] == 1


def test_digest_mismatch(site, device):
    offer = site.release(NEW_CONFIG, IMAGE_CONFIGURATION, 400)
    refused(uc.UPDATE_DIGEST, device, offer, NEW_CONFIG[:-1] + b"!")


def test_manifest_not_on_the_ledger(site, device):
    refused(uc.UPDATE_NOT_ON_LEDGER, device, site.release(NEW_CONFIG, IMAGE_CONFIGURATION, 500, on_ledger=False),
            NEW_CONFIG)


def _lying(site: ReleaseSite, offer: bytes, how: str) -> bytes:
    obj = cbor.loads(offer)
    proof = obj[3]
    if how == "record":                     # a node that shows another record under the key
        proof[3] = cbor.dumps({**cbor.loads(proof[3]), 8: 10**6})
    elif how == "absent":                   # a node that shows the record as absent
        proof[3] = None
    elif how == "votes":                    # a header with fewer than 2f+1 signatures
        proof[1][1][3] = proof[1][1][3][:2]
    elif how == "root":                     # a state root of its own
        proof[1][0][5] = hashlib.sha256(b"lie").digest()
    elif how == "signer":                   # the signer's proof for another device
        obj[2] = site.proof(RecordKind.DEVICE, site.net["sensor"].id)
    return cbor.dumps(obj)


@pytest.mark.parametrize("how", ["record", "absent", "votes", "root", "signer"])
def test_a_lying_nodes_proof(site, device, how):
    offer = site.release(NEW_CONFIG, IMAGE_CONFIGURATION, 600 + len(how))
    refused(uc.UPDATE_BAD_PROOF, device, _lying(site, offer, how), NEW_CONFIG)


def test_truncated_payload(site, device):
    offer = site.release(NEW_CONFIG, IMAGE_CONFIGURATION, 700)
    refused(uc.UPDATE_SIZE, device, offer, NEW_CONFIG[:-10])
    m = device.offer(offer)
    device.chunk(0, NEW_CONFIG[:m.chunk_size])
    with pytest.raises(uc.UpdateRefused) as info:
        device.finish()                      # finished before the last chunks came
    assert info.value.code == uc.UPDATE_SIZE


def test_a_device_of_another_class(site, tmp_path):
    (tmp_path / "config.json").write_bytes(OLD_CONFIG)
    other = make_agent(site, tmp_path, device_class="actuator-v1")
    other.boot(0)
    refused(uc.UPDATE_WRONG_CLASS, other, site.release(NEW_CONFIG, IMAGE_CONFIGURATION, 800), NEW_CONFIG)


def test_a_component_the_device_does_not_install(site, device):
    refused(uc.UPDATE_UNSUPPORTED, device, site.release(APP_V2, IMAGE_FIRMWARE, 1), APP_V2)


def test_unreadable_or_lost_state_refuses_every_update(site, device, tmp_path):
    offer = site.release(NEW_CONFIG, IMAGE_CONFIGURATION, 900)
    (tmp_path / "upd" / "state").write_bytes(b"\x00garbage")
    assert refused(uc.UPDATE_STATE_UNREADABLE, make_agent_like(device), offer, NEW_CONFIG)
    (tmp_path / "upd" / "state").unlink()
    agent = make_agent_like(device)
    assert agent.boot(0) == {}
    refused(uc.UPDATE_STATE_UNREADABLE, agent, offer, NEW_CONFIG)
    agent.provision()                       # provisioning again does not remake a lost state
    refused(uc.UPDATE_STATE_UNREADABLE, agent, offer, NEW_CONFIG)


def test_missing_dependency_and_busy_component(site, device):
    missing = hashlib.sha256(b"not installed").digest()
    refused(uc.UPDATE_DEPENDENCY, device, site.release(APP_V2, IMAGE_APP_LIBRARY, 1000, dependencies=(missing,)),
            APP_V2)
    cfg = install(device, site.release(NEW_CONFIG, IMAGE_CONFIGURATION, 1001), NEW_CONFIG)
    refused(uc.UPDATE_BUSY, device, site.release(b"{}", IMAGE_CONFIGURATION, 1002), b"{}")
    assert install(device, site.release(APP_V2, IMAGE_APP_LIBRARY, 1003, dependencies=(cfg["digest"],)),
                   APP_V2)["sequence"] == 1003


def test_app_library_goes_to_the_other_slot_and_rolls_back_without_check_in(site, device, tmp_path):
    first = site.release(APP_V2, IMAGE_APP_LIBRARY, 1100)
    install(device, first, APP_V2)
    assert (tmp_path / "app.1").read_bytes() == APP_V2
    after_reboot = make_agent_like(device)
    assert after_reboot.boot(0)[IMAGE_APP_LIBRARY]["trial"]
    assert after_reboot.state[IMAGE_APP_LIBRARY][ua._SLOT] == 1
    again = make_agent_like(device)          # a second start without a check-in
    running = again.boot(0)[IMAGE_APP_LIBRARY]
    assert running == {"sequence": 1100, "digest": None, "version": None, "trial": False}
    assert again.state[IMAGE_APP_LIBRARY][ua._SLOT] == 0
    assert again.state[IMAGE_APP_LIBRARY][ua._REFUSED] == offer_digest(first)
    refused(uc.UPDATE_STALE_SEQUENCE, again, first, APP_V2)
    v3 = install(again, site.release(APP_V2 + b"3", IMAGE_APP_LIBRARY, 1101), APP_V2 + b"3")
    assert again.state[IMAGE_APP_LIBRARY][ua._SLOT] == 1 and v3["trial"]
    again.checked_in()
    assert make_agent_like(device).boot(0)[IMAGE_APP_LIBRARY]["trial"] is False


def test_config_rolls_back_when_the_check_in_is_overdue(site, device, tmp_path):
    install(device, site.release(NEW_CONFIG, IMAGE_CONFIGURATION, 1200), NEW_CONFIG, now_ms=5000)
    assert device.tick(5000 + ua.TRIAL_DEADLINE_MS - 1) == []
    assert device.tick(5000 + ua.TRIAL_DEADLINE_MS) == [IMAGE_CONFIGURATION]
    assert (tmp_path / "config.json").read_bytes() == OLD_CONFIG
    assert device.running()[IMAGE_CONFIGURATION]["sequence"] == 1200


def test_download_resumes_after_a_reset(site, device, tmp_path):
    offer = site.release(NEW_CONFIG, IMAGE_CONFIGURATION, 1300)
    m = device.offer(offer)
    device.chunk(0, NEW_CONFIG[:256])
    with pytest.raises(uc.UpdateRefused) as info:
        device.chunk(1, NEW_CONFIG[256:300])                    # a chunk cut short: refused, download dropped
    assert info.value.code == uc.UPDATE_SIZE
    assert device.pending is None
    m = device.offer(offer)
    device.chunk(0, NEW_CONFIG[:256])
    device.chunk(1, NEW_CONFIG[256:512])
    assert device.chunk(0, NEW_CONFIG[:256]) is False           # not the one asked for
    restarted = make_agent_like(device)
    restarted.boot(0)
    assert restarted.pending == m and restarted.next_chunk() == 2
    restarted.chunk(2, NEW_CONFIG[512:])
    assert restarted.finish()["sequence"] == 1300
    assert (tmp_path / "config.json").read_bytes() == NEW_CONFIG


# --- power loss at every write step -----------------------------------------------------------------------

class PowerLoss(OSError):
    pass


class FailingFiles(ua.Files):
    """Files whose ``fail_at``-th change is cut short by a power loss: a write leaves half its bytes, a
    rename (``fat``) may have removed its target first, as FAT's replacing rename does."""

    def __init__(self, fail_at: int, fat: bool) -> None:
        self.fail_at = fail_at
        self.fat = fat
        self.count = 0

    def _step(self) -> bool:
        """True from the ``fail_at``-th change on: the power is off, nothing more is written."""
        self.count += 1
        return self.count >= self.fail_at

    def write(self, path, data):
        if self._step():
            super().write(path, data[:len(data) // 2])
            raise PowerLoss(5, "power lost")
        super().write(path, data)

    def write_at(self, path, offset, data):
        if self._step():
            super().write_at(path, offset, data[:len(data) // 2])
            raise PowerLoss(5, "power lost")
        super().write_at(path, offset, data)

    def rename(self, src, dst):
        if self._step():
            if self.fat:
                super().remove(dst)
            raise PowerLoss(5, "power lost")
        super().rename(src, dst)

    def remove(self, path):
        if self._step():
            raise PowerLoss(5, "power lost")
        super().remove(path)

    def mkdir(self, path):
        if self.size(path) is None and self._step():
            raise PowerLoss(5, "power lost")
        super().mkdir(path)


def _run_until_loss(action, files: FailingFiles) -> bool:
    try:
        action()
    except PowerLoss:
        return True
    return False


def _check_consistent(agent: ua.UpdateAgent, root: Path, old: tuple, new: tuple) -> str:
    """'old' or 'new': the config file, the running digest and the sequence agree on one version."""
    running = agent.running()[IMAGE_CONFIGURATION]
    content = (root / "config.json").read_bytes()
    for name, (seq, digest, payload) in (("old", old), ("new", new)):
        if running["digest"] == digest:
            assert content == payload and running["sequence"] >= seq
            return name
    raise AssertionError("running %r with config %r" % (running, content[:40]))


@pytest.mark.parametrize("fat", [False, True], ids=["posix-rename", "fat-rename"])
def test_power_loss_at_every_write_step_of_install_and_rollback(site, tmp_path, fat):
    first = site.release(NEW_CONFIG[:300], IMAGE_CONFIGURATION, 1400)
    offer = site.release(NEW_CONFIG, IMAGE_CONFIGURATION, 1401)
    old, new = (1400, offer_digest(first), NEW_CONFIG[:300]), (1401, offer_digest(offer), NEW_CONFIG)
    steps = 0
    for phase in ("install", "rollback"):
        fail_at = 1
        while True:
            root = tmp_path / ("%s-%d" % (phase, fail_at))
            root.mkdir()
            (root / "config.json").write_bytes(b"factory")
            base = make_agent(site, root)
            base.boot(0)
            install(base, first, NEW_CONFIG[:300])
            base.checked_in()
            if phase == "rollback":
                install(base, offer, NEW_CONFIG)
            files = FailingFiles(fail_at, fat)
            agent = make_agent(site, root, files, provision=False)
            if phase == "install":
                lost = _run_until_loss(lambda: (agent.boot(0), install(agent, offer, NEW_CONFIG)), files)
            else:
                lost = _run_until_loss(lambda: (agent.boot(0), agent.tick(ua.TRIAL_DEADLINE_MS)), files)
            after = make_agent(site, root, provision=False)
            after.boot(0)
            version = _check_consistent(after, root, old, new)
            if phase == "install" and version == "old":
                install(after, offer, NEW_CONFIG)                       # the retry completes
                assert _check_consistent(after, root, old, new) == "new"
            if phase == "rollback":
                after.tick(ua.TRIAL_DEADLINE_MS)
                assert _check_consistent(after, root, old, new) == "old"
                assert after.running()[IMAGE_CONFIGURATION]["sequence"] == 1401
            if not lost:
                break
            steps += 1
            fail_at += 1
    assert steps >= 12                      # offer, three chunks, commit, renames, state writes, rollback


def test_power_loss_at_every_write_step_of_provisioning(site, tmp_path):
    offer = site.release(NEW_CONFIG, IMAGE_CONFIGURATION, 1500)
    fail_at = 1
    while True:
        root = tmp_path / ("p-%d" % fail_at)
        root.mkdir()
        files = FailingFiles(fail_at, fat=True)
        lost = _run_until_loss(lambda: make_agent(site, root, files), files)
        agent = make_agent(site, root)                 # the next start provisions again where it must
        agent.boot(0)
        assert install(agent, offer, NEW_CONFIG)["sequence"] == 1500
        if not lost:
            break
        fail_at += 1
    assert fail_at == 4                                 # mkdir, write, rename, then no loss


def test_a_new_download_does_not_resume_what_another_left(site, device, tmp_path):
    first = site.release(NEW_CONFIG, IMAGE_CONFIGURATION, 1600)
    m = device.offer(first)
    device.chunk(0, NEW_CONFIG[:m.chunk_size])
    (tmp_path / "upd" / "offer").unlink()                 # its offer gone (as after a refusal at the restart)
    other = b'{"interval_s": 9}' * 30
    restarted = make_agent_like(device)
    restarted.boot(0)
    assert restarted.pending is None
    assert install(restarted, site.release(other, IMAGE_CONFIGURATION, 1601), other)["sequence"] == 1601
    assert (tmp_path / "config.json").read_bytes() == other


from hypothesis import HealthCheck, example, given, settings, strategies as st  # noqa: E402

_values = st.none() | st.booleans() | st.integers(-1, 3) | st.binary(max_size=33) | st.text(max_size=3) | st.lists(
    st.none() | st.integers(0, 2) | st.binary(min_size=32, max_size=32) | st.text(max_size=2), max_size=4)


@given(st.binary(max_size=64) | st.builds(
    lambda entries: cbor.dumps([ua.STATE_FORMAT, entries]),
    st.dictionaries(st.integers(0, 4), st.dictionaries(st.integers(0, 9), _values, max_size=6), max_size=3)))
@example(cbor.dumps([ua.STATE_FORMAT, {IMAGE_CONFIGURATION: {1: 1, 5: [b"x"], 6: 1}}]))     # a previous cut short
@example(cbor.dumps([ua.STATE_FORMAT, {IMAGE_APP_LIBRARY: {1: 1, 5: [None, None, 9], 6: 1}}]))
@example(cbor.dumps([ua.STATE_FORMAT, {IMAGE_CONFIGURATION: {1: 1, 2: 5}}]))             # a digest that is a number
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_a_damaged_state_is_refused_or_taken_never_a_crash(tmp_path, data):
    site = _SITE.get("site") or _SITE.setdefault("site", ReleaseSite())
    root = tmp_path / ("s%d" % len(list(tmp_path.iterdir())))
    root.mkdir()
    (root / "config.json").write_bytes(OLD_CONFIG)
    agent = make_agent(site, root)
    (root / "upd" / "state").write_bytes(data)
    agent = make_agent(site, root, provision=False)
    running = agent.boot(0)                                   # never raises
    agent.tick(ua.TRIAL_DEADLINE_MS)
    assert isinstance(running, dict)
    if agent.state is None:
        assert agent.running() == {}


_SITE: dict = {}


def test_an_offer_whose_proofs_predate_a_ban_is_refused_once_newer_headers_are_seen(site, device, tmp_path):
    """Replay after a maintenance-key ban: the offer's proofs (from before the ban) still check against
    2f+1 signatures, so only their age tells. Once the device has verified a header more than
    ``fresh_heights`` above them (its receipts' headers), it refuses the offer; after a restart too."""
    from ledgerlink.protocol.ledger_tx import TX_BAN

    offer = site.release(NEW_CONFIG, IMAGE_CONFIGURATION, 400)
    assert site.commit([site.net.tx("admin", TX_BAN, {4: site.net["maintenance"].id, 5: "key lost"})]) == [0]
    fresh = site.height
    for _ in range(ua.uc.FRESH_HEIGHTS):
        site.commit([])
    device.saw_header(site.height)                                    # a receipt's certified header
    assert refused(uc.UPDATE_STALE_PROOF, device, offer, NEW_CONFIG).code == uc.UPDATE_STALE_PROOF
    restarted = make_agent_like(device)
    restarted.boot(0)
    with pytest.raises(uc.UpdateRefused) as info:
        restarted.offer(offer)
    assert info.value.code == uc.UPDATE_STALE_PROOF
    # proofs exactly fresh_heights below the newest header are taken: the bound is what a ban leaves open
    (tmp_path / "other").mkdir()
    other = make_agent(site, tmp_path / "other")
    other.boot(0)
    other.saw_header(fresh - 1 + ua.uc.FRESH_HEIGHTS)
    assert other.offer(offer).sequence == 400
