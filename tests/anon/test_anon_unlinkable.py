"""Unlinkability of anonymous sessions, as docs/protocol.md ("Anonymous sessions") states it.

The property: run two sessions of device A and one each of B and C (A1, B, A2, C, one second apart).
For each session gather every byte string a party other than the device and the cloud sees:
- the broker: each topic and payload published (request, answer, grant, and two readings, the same in
  every session, under the session's key);
- the fog's store: every row the session added (both tables);
- a ledger reader: the spend transaction, the records it read and wrote, and their state keys;
plus the derived values: the SHA-256 of each, and recursively every byte string and integer inside
each CBOR value (COSE payloads included), with their SHA-256. Then every 8-byte substring present in
both of A's sessions is present in B's and in C's as well (it is a constant of the site or a common
time prefix), and the fog's outputs for A1 and for B have the same form: the same effect kinds, topic
lengths, payload lengths and ledger result.
"""

import hashlib

from ledgerlink.core import cbor, cose
from ledgerlink.core.errors import LedgerlinkError
from ledgerlink.ledger.state import RecordKind as RK
from ledgerlink.protocol import anon_wire
from ledgerlink.protocol.ledger_tx import state_key
from tests.anon.site import SITE, Site

WINDOW = 8
READING = b"temp=21.5 C"


def _leaves(value, out):
    """Every byte string and integer inside a CBOR value (and inside COSE payloads and nested CBOR)."""
    if isinstance(value, (bytes, bytearray)):
        value = bytes(value)
        out.append(value)
        for parse in (cbor.loads, lambda b: cbor.loads(cose.decode_sign1(b).payload)):
            try:
                inner = parse(value)
            except (LedgerlinkError, ValueError, TypeError, IndexError):
                continue
            if inner != value:
                _leaves(inner, out)
    elif isinstance(value, int) and not isinstance(value, bool):
        out.append(value.to_bytes(max(1, (value.bit_length() + 7) // 8), "big"))
        out.append(value.to_bytes(16, "big"))
    elif isinstance(value, str):
        out.append(value.encode())
    elif isinstance(value, (list, tuple)):
        for v in value:
            _leaves(v, out)
    elif isinstance(value, dict):
        for k, v in value.items():
            _leaves(k, out)
            _leaves(v, out)


def view(items):
    """The set of 8-byte windows of every item and every value derived from it."""
    values = []
    for item in items:
        _leaves(item, values)
    values += [hashlib.sha256(v).digest() for v in list(values)]
    return {v[i:i + WINDOW] for v in values for i in range(len(v) - WINDOW + 1)}


def observed(site, outcome, rows_before):
    """What the broker, the fog's store and a ledger reader hold of one session."""
    items = []
    for topic, payload in outcome.broker:
        items += [topic, payload]
    items += [tuple(row) for row in site.stores[0].rows() if row not in rows_before]
    for tx in outcome.ledger:
        items.append(tx)
    body = cbor.loads(cose.decode_sign1(outcome.ledger[0]).payload)
    anon_id = body[4]
    items += [state_key(RK.ANON_CERT, anon_id), site.state.get_record_bytes(RK.ANON_CERT, anon_id),
              state_key(RK.ANON_SPENT, anon_wire.secondary_hash(anon_id))]
    return items


def run_sessions(tmp_path):
    site = Site(tmp_path)
    views, outcomes = {}, {}
    for label, name in (("A1", "devA"), ("B", "devB"), ("A2", "devA"), ("C", "devC")):
        before = site.stores[0].rows()
        out = site.session(name)
        assert out.refused is None and out.session is not None
        for _ in range(2):                                      # the same readings in every session
            topic, frame = out.session.seal(SITE, READING)
            assert site.cloud.open_data(topic, frame, site.time_ms)[2] == READING
            out.broker.append((topic, frame))
        outcomes[label] = out
        views[label] = observed(site, out, before)
    return site, views, outcomes


def linking(views):
    """Windows both sessions of A share that B or C lacks: each one links A1 to A2."""
    w = {label: view(items) for label, items in views.items()}
    return (w["A1"] & w["A2"]) - (w["B"] & w["C"])


def shape(outcome):
    return ([(type(e).__name__, len(getattr(e, "topic", "")), len(getattr(e, "payload", b"") or getattr(e, "tx", b"")))
             for e in outcome.fog_effects], [(len(t), len(p)) for t, p in outcome.broker],
            [len(x) for x in outcome.ledger], outcome.refused)


def test_two_sessions_of_a_device_share_nothing_that_other_devices_sessions_lack(tmp_path):
    site, views, outcomes = run_sessions(tmp_path)
    assert linking(views) == set()
    # what a verifier outputs for A's first session and for B's: same kinds, sizes and result
    assert shape(outcomes["A1"]) == shape(outcomes["B"])
    assert shape(outcomes["A2"]) == shape(outcomes["C"])
    # the cloud alone names the devices
    assert [site.cloud.deanonymize(outcomes[s].cloud_session) for s in ("A1", "B", "A2", "C")] == \
        [site.net[n].id for n in ("devA", "devB", "devA", "devC")]


def test_the_check_finds_a_link_when_there_is_one(tmp_path):
    site, views, _ = run_sessions(tmp_path)
    # a static identifier in both of A's sessions (its device id, or a value derived from it) is caught
    for leak in (site.net["devA"].id, cbor.dumps({1: site.net["devA"].id})):
        leaked = {k: v + ([leak] if k in ("A1", "A2") else []) for k, v in views.items()}
        assert linking(leaked)
    # and so is a repeated dynamic id (a counter reused): the same id_k in both requests
    repeated = anon_wire.anon_id(b"\x01" * 32, 1)
    leaked = {k: v + ([{9: repeated}] if k in ("A1", "A2") else []) for k, v in views.items()}
    assert hashlib.sha256(repeated).digest()[:WINDOW] in linking(leaked)
