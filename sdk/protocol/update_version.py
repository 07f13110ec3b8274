"""Version statements (docs/protocol.md, "Updates", "version-statement"): what a device states it runs, signed
by its registered key, so the ledger holds each device's running version and not only what an update service
says it heard.

A statement is ``[body, signature]``: body = cbor {1: device-id, 2: class, 3: component, 4: sequence,
5: manifest digest / null (as deployed), 6: time ms}, signature = ES256 (raw r || s) by the device's key over
``cbor([VERSION_DOMAIN, chain-id, body])``. The domain and chain id keep it from being taken for any other
signature of that key (a transaction, a registration request, a rotation) or on another chain. A device
signs one at its first report and after each install; the update service relays it (``device-version``
transaction) and the ledger's contract checks it. The device's status (``update-status``), which carries its
statements, is made here too. Portable; a board imports it only when it makes its status.
"""

from ledgerlink.core import cbor
from ledgerlink.core.errors import InvalidMessage, LedgerlinkError

VERSION_DOMAIN = "ledgerlink-version-v1"
STATEMENT_MAX = 320             # bytes of an encoded version-statement
SIGNATURE_LEN = 64
CLASS_MAX = 64                  # characters of a device class (ledger_tx.MAX_ID)
MSG_STATUS = 1                  # update-request [1, update-status]


def encode_status(device_class, running, refusals=(), statements=None):
    """update-status: {1: class, 2: {component: [sequence, manifest digest/null, version/null, trial]},
    ? 3: [+ [reason, manifest digest/null]], ? 4: {component: version-statement}} (the last refusals, newest
    last; the statements of versions not stated before)."""
    status = {1: device_class, 2: {c: [e["sequence"], e["digest"], e["version"], e["trial"]] for c, e in running.items()}}
    if refusals:
        status[3] = [list(r) for r in refusals]
    if statements:
        status[4] = statements
    return cbor.dumps([MSG_STATUS, status])


def due_statements(stated, running, chain_id, device_id, device_class, sign, time_ms):
    """{component: version-statement} of the versions in ``running`` ({component: {"sequence", "digest",
    ...}}) that ``stated`` ({component: [sequence, digest]}, updated here) does not hold, or None: signed
    only then, so a repeated status costs no signature."""
    due = [(c, e) for c, e in running.items() if stated.get(c) != [e["sequence"], e["digest"]]]
    if not due:
        return None
    out = {}
    for c, e in due:
        out[c] = sign_statement(chain_id, device_id, device_class, c, e["sequence"], e["digest"], time_ms, sign)
        stated[c] = [e["sequence"], e["digest"]]
    return out


def tbs(chain_id, body):
    """The bytes the device signs: cbor([VERSION_DOMAIN, chain-id, body])."""
    return cbor.dumps([VERSION_DOMAIN, chain_id, bytes(body)])


def sign_statement(chain_id, device_id, device_class, component, sequence, digest, time_ms, sign):
    """An encoded version-statement; ``sign(message)`` returns the device key's 64-byte ES256 signature."""
    body = cbor.dumps({1: bytes(device_id), 2: device_class, 3: int(component), 4: int(sequence),
                       5: None if digest is None else bytes(digest), 6: int(time_ms)})
    return cbor.dumps([body, bytes(sign(tbs(chain_id, body)))])


def decode_statement(data):
    """(body bytes, fields, signature) of an encoded version-statement; InvalidMessage when malformed."""
    try:
        outer = cbor.loads(bytes(data), max_depth=3, max_size=STATEMENT_MAX)
        if not (isinstance(outer, list) and len(outer) == 2 and isinstance(outer[0], bytes)
                and isinstance(outer[1], bytes) and len(outer[1]) == SIGNATURE_LEN):
            raise InvalidMessage("a version-statement is [body, 64-byte signature]")
        f = cbor.loads(outer[0], max_depth=2, max_size=STATEMENT_MAX)
    except (LedgerlinkError, TypeError, ValueError) as exc:
        raise InvalidMessage("not a version-statement: %s" % exc) from None
    if not isinstance(f, dict) or sorted(f) != [1, 2, 3, 4, 5, 6]:
        raise InvalidMessage("a version-statement body has fields 1 to 6")
    if not isinstance(f[1], bytes) or len(f[1]) != 16:
        raise InvalidMessage("version-statement device id is 16 bytes")
    if not isinstance(f[2], str) or not 1 <= len(f[2]) <= CLASS_MAX:
        raise InvalidMessage("version-statement class is 1 to %d characters" % CLASS_MAX)
    for k in (3, 4, 6):
        if not cbor.is_uint(f[k]):
            raise InvalidMessage("version-statement field %d is an unsigned integer" % k)
    if f[5] is None:
        if f[4] != 0:
            raise InvalidMessage("a version-statement without a digest states sequence 0 (as deployed)")
    elif not isinstance(f[5], bytes) or len(f[5]) != 32:
        raise InvalidMessage("version-statement digest is 32 bytes or null")
    return outer[0], f, outer[1]
