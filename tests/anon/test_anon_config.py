"""The settings of anonymous sessions in ``ledgerlink up`` and the gateway config are checked before anything
starts: off by default, the escrow key must be a P-256 point, and a fog key file others can read is refused
by both (it opens every anonymous request)."""

from __future__ import annotations

import json
import os

import pytest

from ledgerlink.core.backend import get_backend
from ledgerlink.gateway.main import start_anon
from ledgerlink.tools import up

CRYPTO = get_backend("cpython")


def _config(tmp_path, **anon) -> up.UpConfig:
    path = tmp_path / "up.json"
    raw = {"data_dir": "site", "site": "plant-3"}
    if anon:
        raw["anon"] = anon
    path.write_text(json.dumps(raw))
    return up.load_config(path)


def _key_file(path, mode: int) -> str:
    path.write_text(CRYPTO.generate_private_key().hex() + "\n")
    os.chmod(path, mode)
    return str(path)


def test_off_unless_enabled_and_the_escrow_key_checked(tmp_path):
    assert _config(tmp_path).anon is False
    assert _config(tmp_path, enabled=False).anon is False
    public = CRYPTO.public_key(CRYPTO.generate_private_key(), True).hex()
    cfg = _config(tmp_path, enabled=True, cloud_public=public)
    assert cfg.anon and cfg.anon_cloud_public.hex() == public
    assert cfg.anon_fog_key == cfg.data_dir / "ledger" / "keys" / up.ANON_FOG_KEY
    for anon, message in (({"enabled": "yes"}, "anon.enabled must be true or false"),
                          ({"enabled": True}, "lacks anon.cloud_public"),
                          ({"enabled": True, "cloud_public": "05" + "11" * 32}, "P-256 point"),
                          ({"enabled": True, "cloud_public": "zz"}, "P-256 point"),
                          ({"enabled": True, "cloud_public": public, "colour": 1}, "unknown config field anon.colour")):
        with pytest.raises(up.ConfigError, match=message):
            _config(tmp_path, **anon)


def test_a_fog_key_others_can_read_is_refused_by_up_and_by_the_gateway(tmp_path):
    public = CRYPTO.public_key(CRYPTO.generate_private_key(), True).hex()
    readable = _key_file(tmp_path / "fog.key", 0o644)
    with pytest.raises(up.ConfigError, match="chmod 600"):
        up.preflight(_config(tmp_path, enabled=True, cloud_public=public, fog_key=readable))
    gateway_cfg = {"_dir": str(tmp_path), "site": "plant-3", "anon": {"fog_key": readable, "cloud_public": public,
                                                                      "client_id": "ll-anonfog-plant-3-1"}}
    with pytest.raises(SystemExit, match="must be mode 0600"):
        start_anon(gateway_cfg, None)
    os.chmod(readable, 0o600)
    up.preflight(_config(tmp_path, enabled=True, cloud_public=public, fog_key=readable))
    gateway_cfg["anon"]["cloud_public"] = "05" + "11" * 32
    with pytest.raises(SystemExit, match="escrow public key"):
        start_anon(gateway_cfg, None)
