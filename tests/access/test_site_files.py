"""The site's files are its owner's only, and the dashboard asks for the token ``up`` makes."""

from __future__ import annotations

import base64
import stat
import urllib.error
import urllib.request

import pytest

from ledgerlink.tools.stack import Stack


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    s = Stack(tmp_path_factory.mktemp("files") / "site", site="fil", broker="embedded", dashboard_login=True)
    try:
        s.start()
        yield s
    finally:
        s.stop()


def _mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_store_logs_keys_and_logins_are_owner_only(site):
    d = site.data_dir
    site.device_login(bytes(16))                                  # a device account: the broker-login key is made
    assert _mode(d) == 0o700 and _mode(d / "broker") == 0o700 and _mode(d / "broker" / "credentials") == 0o700
    for f in ["gateway.db", "gateway.log", "mqtt_broker.log", "dashboard.token", "ledger/node0.log",
              "broker/accounts.json", "broker/credentials/ll-gw-fil-1.json", "broker/credentials/ll-app-fil.json",
              "ledger/keys/gateway.key", "ledger/keys/admin.key", "broker/login.key",
              "broker/credentials/ll-%s.json" % bytes(16).hex()]:
        assert _mode(d / f) == 0o600, "%s is %o" % (f, _mode(d / f))


def _get(url: str, auth: str | None = None) -> int:
    req = urllib.request.Request(url)
    if auth:
        req.add_header("Authorization", auth)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_dashboard_needs_the_token(site):
    url = site.dashboard_url
    token = (site.data_dir / "dashboard.token").read_text().strip()
    assert len(token) >= 32
    for path in ("", "metrics", "api/state", "api/registrations", "static/app.js"):
        assert _get(url + path) == 401, path
        assert _get(url + path, "Bearer " + token[:-1] + "x") == 401, path
        assert _get(url + path, "Basic " + base64.b64encode(b"admin:wrong").decode()) == 401, path
    assert _get(url, "Basic " + base64.b64encode(("admin:" + token).encode()).decode()) == 200
    assert _get(url + "metrics", "Bearer " + token) == 200
