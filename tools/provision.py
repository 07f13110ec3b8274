"""``ledgerlink provision``: give a MicroPython board its identity key and register it on the ledger.

``ledgerlink provision --port PORT [--board esp32] (--cluster FILE | --up-config FILE) [--name N] ...``

``ledgerlink provision --up-config UP.json --write-config FILE --name N [--broker-host HOST]`` writes, with
no board, the device config ``ledgerlink deploy --config`` takes, from what the site's first run made: the
broker's address, site, chain id, validator keys and the gateway's fog CA key (``site_device_config``).

The device key pair is made ON THE BOARD, by ``ledgerlink.core.ecdsa`` with the board's ``os.urandom``;
the board keeps the private key in ``ledgerlink.key`` (hex) and sends only its public key and its signed
registration request (the proof of possession). The host checks the request, wraps it in an
admin-signed registration transaction (``tools/admin.py``), waits for the commit, fetches the device
record with its sparse-Merkle proof under a certified header and verifies it against the trusted
validator set of the cluster config. It then writes to the board:

- ``ledgerlink.reg.cbor``: CBOR map {1: chain id, 2: device id, 3: record-proof (bstr holding the
  ``record-proof`` map that ``ledgerlink.protocol.spv.verify_record_proof`` takes), 4: registration tx id
  (bstr; absent when the device was registered before)};
- ``ledgerlink.id.json``: ``device_id``, ``public_key``, ``chain_id``, ``height`` of the proof's header;
- ``ledgerlink.mqtt.json``: the device's broker login ``{"username", "password", "login_key"}``, when the
  site's broker accounts are beside the cluster config (``ledgerlink up``'s ``data_dir/broker``;
  ``broker_access``); ``login_key`` is the site's broker-login public key, with which the device computes
  its new password after a rotation of its key (``ledgerlink.protocol.broker_login``).

Both travel inside the program sent to the board, which first verifies the proof itself with
``ledgerlink.protocol.spv`` against the ``validator_keys`` (and, on a ledger with threshold headers, the
``group_key``) of its own config (written by ``ledgerlink deploy``; a config whose keys differ from the
ledger's is refused before the board makes a key) and checks that the proven record holds its own public key; only then does it write them
(each to a temporary name, then renamed into place). ``--check`` reruns that verification on the
board from the stored files.

``ledgerlink provision --port PORT (--cluster FILE | --up-config FILE) --rotate-key`` rotates a provisioned
board's key: the board makes a new key pair (kept as ``ledgerlink.key.new`` until the ledger proves it) and
signs the ``tx-rotate-key`` with its current key (``ledgerlink.protocol.ledger_tx``); the host submits it;
the board checks the proof of its record under the new key as above, takes the new key, notes
``key_rotated`` and its registered device id in ``ledgerlink.id.json`` (the board client keeps that id,
``main.load_config``), and computes its new broker password into ``ledgerlink.mqtt.json``
(``ledgerlink.protocol.broker_login``, the code with which ``ledgerlink up`` sets it when it follows the
rotation). Nothing secret crosses to the host.

Protects against: the private key leaving the board (no program sent to the board prints it; the host
never reads the key file; tests scan everything the host printed or wrote for it); losing a registered
key (a board with a key keeps it; ``--new-key`` must come with ``--force`` to replace it, and the new key
only replaces the old one after its registration is proven); a lying ledger node (every record is
checked with spv on the host and again on the board). A key made by a run that did not finish is
kept as ``ledgerlink.key.new`` and reused by the next run, so a registered key is
never thrown away; a key whose registration the ledger refused is removed again. Tested end to end
against a 4-node ledger and the virtual board in tests/hardware/test_provision.py.

Exit status: 0 done, 1 refused by the ledger or a check failed, 2 bad arguments, cluster config or key
file, 3 no board answers on the port, 4 the board is not set up (library or config missing: run
``ledgerlink deploy``), 5 no ledger node answered. Errors are one line on stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Callable, Sequence

from ledgerlink.ledger.state import encoding as enc
from ledgerlink.ledger.state.codes import DeviceStatus, RecordKind
from ledgerlink.tools import admin, deploy

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_NO_BOARD = 3
EXIT_NOT_DEPLOYED = 4
EXIT_LEDGER = 5

KEY_FILE = "ledgerlink.key"
PENDING_KEY_FILE = KEY_FILE + ".new"
PROOF_FILE = "ledgerlink.reg.cbor"
ID_FILE = "ledgerlink.id.json"
MQTT_FILE = "ledgerlink.mqtt.json"
DEFAULT_CONFIG = "ledgerlink.json"
MARK = "PROVISION:"
BOARD_TIMEOUT = 600.0

BOARD_COMMON = """\
import json, os, hashlib

def out(obj):
    print('PROVISION:' + json.dumps(obj))

def exists(path):
    try:
        os.stat(path)
        return True
    except OSError:
        return False

def replace(src, dst):
    try:
        os.remove(dst)
    except OSError:
        pass
    os.rename(src, dst)

def write(path, data):
    tmp = path + '.tmp'
    with open(tmp, 'wb') as f:
        f.write(data)
    replace(tmp, path)

def read_private(path):
    with open(path) as f:
        return bytes.fromhex(f.read().strip())

def trusted_keys(path):
    with open(path) as f:
        cfg = json.load(f)
    return cfg, [bytes.fromhex(k) for k in cfg.get('validator_keys') or []]

def site_config(path, validators, group_key):
    # (config, trusted keys, None), or (None, None, the refusal) when the config is unreadable or names
    # other validators (or another FROST group key) than the host's
    try:
        cfg, trusted = trusted_keys(path)
    except (OSError, ValueError) as exc:
        return None, None, {'status': 'no-config', 'error': str(exc)}
    if [k.hex() for k in trusted] != validators:
        return None, None, {'status': 'other-validators', 'count': len(trusted)}
    if cfg.get('group_key') != group_key:
        return None, None, {'status': 'other-group-key', 'has': cfg.get('group_key') is not None}
    return cfg, trusted, None

def verify_stored(data, trusted, pub, rotated=False, group=None):
    # group: the FROST group key (hex) of the board's config, on a ledger with threshold headers
    from ledgerlink.core import cbor
    from ledgerlink.protocol import spv
    doc = cbor.loads(data)
    chain_id, dev = doc[1], doc[2]
    header, key, value = spv.verify_record_proof(doc[3], chain_id, trusted, None,
                                                 bytes.fromhex(group) if group else None)
    if key != spv.state_key(1, dev) or value is None:
        raise ValueError('the proof is not of this device record')
    record = cbor.loads(value)
    if record[1] != dev or record[2] != pub or (not rotated and hashlib.sha256(pub).digest()[:16] != dev):
        raise ValueError('the proven record does not hold this board key')
    if record[5] != 1:
        raise ValueError('the device is not active on the ledger')
    return dev, header.height
"""

# Make or reuse the key (nothing is written unless every check passed), return the signed request.
PREPARE = BOARD_COMMON + """\
P = json.loads(%r)

def main():
    try:
        from ledgerlink.core import cbor, cose, ecdsa
    except ImportError as exc:
        return {'status': 'no-library', 'error': str(exc)}
    cfg, trusted, refused = site_config(P['config'], P['validators'], P.get('group_key'))
    if refused:
        return refused
    name = P['name'] or cfg.get('device_name')
    if not name:
        return {'status': 'no-name'}
    have_key = exists(P['key'])
    if have_key and P['new_key'] and not P['force']:
        return {'status': 'has-key'}
    if have_key and not P['new_key']:
        path, made = P['key'], 'kept'
    elif exists(P['pending']):
        path, made = P['pending'], 'resumed'
    else:
        try:
            os.urandom
        except AttributeError:
            return {'status': 'no-urandom'}
        tmp = P['pending'] + '.tmp'
        with open(tmp, 'w') as f:
            f.write(ecdsa.generate_private_key().hex())
        os.rename(tmp, P['pending'])
        path, made = P['pending'], 'new'
    priv = read_private(path)
    pub = ecdsa.public_key(priv, True)
    dev = hashlib.sha256(pub).digest()[:16]
    attrs = {'name': name}
    for k in ('model', 'location'):
        if P[k] is not None:
            attrs[k] = P[k]
    payload = {1: dev, 2: pub, 3: P['role'], 4: attrs, 5: P['time_ms']}
    request = cose.sign1(cbor.dumps(payload), priv, dev, b'')
    return {'status': 'ok', 'key': made, 'had_key': have_key, 'public_key': pub.hex(), 'request': request.hex()}

out(main())
"""

# Verify the proof against the board's own key and trust anchor, then write the files and commit the key.
COMMIT = BOARD_COMMON + """\
P = json.loads(%r)

def main():
    from ledgerlink.core import ecdsa
    cfg, trusted = trusted_keys(P['config'])
    path = P['pending'] if P['use_pending'] else P['key']
    try:
        pub = ecdsa.public_key(read_private(path), True)
    except OSError:
        pub = b''
    if pub.hex() != P['public_key']:
        return {'status': 'key-changed'}
    data = bytes.fromhex(P['proof_data'])
    try:
        dev, height = verify_stored(data, trusted, pub, False, cfg.get('group_key'))
    except Exception as exc:
        return {'status': 'bad-proof', 'error': '%%s: %%s' %% (type(exc).__name__, exc)}
    if path == P['pending']:
        replace(P['pending'], P['key'])
        try:
            os.mkdir('ll')
        except OSError:
            pass
        write('ll/llcmd', bytes.fromhex(P['commands_data']))   # a new key: an empty command record, no fence
    write(P['proof'], data)
    write(P['id'], P['id_data'].encode())
    if P.get('mqtt_data'):
        write(P['mqtt'], P['mqtt_data'].encode())
    return {'status': 'ok', 'device_id': dev.hex(), 'height': height}

out(main())
"""

# Remove the key this run made after the ledger refused its registration.
DISCARD = BOARD_COMMON + """\
P = json.loads(%r)
from ledgerlink.core import ecdsa
if exists(P['pending']) and ecdsa.public_key(read_private(P['pending']), True).hex() == P['public_key']:
    os.remove(P['pending'])
out({'status': 'ok'})
"""

# Re-verify the stored proof on the board (no ledger needed).
CHECK = BOARD_COMMON + """\
P = json.loads(%r)

def main():
    try:
        from ledgerlink.core import ecdsa
    except ImportError as exc:
        return {'status': 'no-library', 'error': str(exc)}
    if not exists(P['key']) or not exists(P['proof']):
        return {'status': 'not-provisioned'}
    try:
        cfg, trusted = trusted_keys(P['config'])
    except (OSError, ValueError) as exc:
        return {'status': 'no-config', 'error': str(exc)}
    pub = ecdsa.public_key(read_private(P['key']), True)
    with open(P['proof'], 'rb') as f:
        data = f.read()
    try:
        with open(P['id']) as f:
            rotated = bool(json.load(f).get('key_rotated'))
    except (OSError, ValueError):
        rotated = False
    try:
        dev, height = verify_stored(data, trusted, pub, rotated, cfg.get('group_key'))
    except Exception as exc:
        return {'status': 'bad-proof', 'error': '%%s: %%s' %% (type(exc).__name__, exc)}
    return {'status': 'ok', 'device_id': dev.hex(), 'height': height, 'validators': len(trusted)}

out(main())
"""


# A new key on the board and the rotate-key transaction to it, signed by the current key.
ROTATE = BOARD_COMMON + """\
P = json.loads(%r)

def main():
    try:
        from ledgerlink.core import ecdsa
        from ledgerlink.protocol import ledger_tx
    except ImportError as exc:
        return {'status': 'no-library', 'error': str(exc)}
    cfg, trusted, refused = site_config(P['config'], P['validators'], P.get('group_key'))
    if refused:
        return refused
    if not exists(P['key']) or not exists(P['id']):
        return {'status': 'not-provisioned'}
    with open(P['id']) as f:
        dev = bytes.fromhex(json.load(f)['device_id'])
    made = 'resumed'
    if not exists(P['pending']):
        tmp = P['pending'] + '.tmp'
        with open(tmp, 'w') as f:
            f.write(ecdsa.generate_private_key().hex())
        os.rename(tmp, P['pending'])
        made = 'new'
    priv, new = read_private(P['key']), read_private(P['pending'])
    tx = ledger_tx.rotate_key_tx(P['chain_id'], priv, new, P['time_ms'], kid=dev)
    return {'status': 'ok', 'key': made, 'device_id': dev.hex(), 'public_key': ecdsa.public_key(priv, True).hex(),
            'new_public_key': ecdsa.public_key(new, True).hex(), 'tx': tx.hex()}

out(main())
"""

# Verify the proof of the rotated record on the board, then take the new key, store the proof and compute
# the broker password the site gives the account for it (ledgerlink.protocol.broker_login).
ROTATE_COMMIT = BOARD_COMMON + """\
P = json.loads(%r)

def main():
    from ledgerlink.core import ecdsa
    cfg, trusted = trusted_keys(P['config'])
    try:
        new = read_private(P['pending'])
    except OSError:
        return {'status': 'key-changed'}
    pub = ecdsa.public_key(new, True)
    if pub.hex() != P['public_key']:
        return {'status': 'key-changed'}
    data = bytes.fromhex(P['proof_data'])
    try:
        dev, height = verify_stored(data, trusted, pub, True, cfg.get('group_key'))
    except Exception as exc:
        return {'status': 'bad-proof', 'error': '%%s: %%s' %% (type(exc).__name__, exc)}
    replace(P['pending'], P['key'])
    write(P['proof'], data)
    write(P['id'], P['id_data'].encode())
    login = None
    if exists(P['mqtt']):
        with open(P['mqtt']) as f:
            login = json.load(f)
    if login and login.get('login_key'):
        from ledgerlink.protocol import broker_login
        login.update(broker_login.login(dev, new, bytes.fromhex(login['login_key'])))
        write(P['mqtt'], json.dumps(login).encode())
    return {'status': 'ok', 'device_id': dev.hex(), 'height': height, 'login': bool(login and login.get('login_key'))}

out(main())
"""


class ProvisionError(Exception):
    """A failure with its exit status; the message is one line saying what to do."""

    def __init__(self, message: str, status: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.status = status


class LedgerContext(admin.Context):
    """``admin.Context`` that keeps the last raw ``record`` answer, so its proof can be stored on the board."""

    last_record: dict | None = None

    def call(self, op: str, *args: Any) -> dict:
        res = super().call(op, *args)
        if op == "record":
            self.last_record = res
        return res


def _deploy_hint(port: str) -> str:
    return "run `ledgerlink deploy --port %s --board BOARD --config CONFIG` first" % port


class Board:
    """The board on ``port``, reached with mpremote; runs the provisioning programs."""

    def __init__(self, port: str, config_path: str, timeout: float = BOARD_TIMEOUT) -> None:
        self.port = port
        self.paths = {"key": KEY_FILE, "pending": PENDING_KEY_FILE, "proof": PROOF_FILE, "id": ID_FILE,
                      "mqtt": MQTT_FILE, "config": config_path}
        self.timeout = timeout

    def run(self, program: str, params: dict) -> dict:
        """Run a board program with ``params``; return its ``PROVISION:`` answer."""
        result = deploy.mpremote(self.port, "exec", program % json.dumps(dict(self.paths, **params)),
                                 timeout=self.timeout)
        for line in result.stdout.splitlines():
            if line.startswith(MARK):
                try:
                    answer = json.loads(line[len(MARK):])
                except ValueError:
                    break
                if isinstance(answer, dict):
                    return answer
        text = result.stdout + result.stderr
        if "Traceback" in text:
            raise ProvisionError("the program on the board failed (%s): check free memory and MicroPython "
                                 ">= 1.22, then rerun provision" % deploy._last_line(result))
        raise ProvisionError("no MicroPython board answers on %s (%s): check the port (mpremote connect list), "
                             "the cable, and that no other program holds it" % (self.port, deploy._last_line(result)),
                             EXIT_NO_BOARD)


def _board_status(answer: dict, port: str) -> None:
    """Raise for a PREPARE/CHECK answer that is not ``ok``."""
    status = answer.get("status")
    if status == "ok":
        return
    if status == "no-library":
        raise ProvisionError("the ledgerlink library is not on the board on %s (%s): %s"
                             % (port, answer.get("error"), _deploy_hint(port)), EXIT_NOT_DEPLOYED)
    if status == "no-config":
        raise ProvisionError("the board has no readable config with validator_keys (%s): %s"
                             % (answer.get("error"), _deploy_hint(port)), EXIT_NOT_DEPLOYED)
    if status == "other-validators":
        raise ProvisionError("the board's config trusts other validator keys (%d) than this ledger: put the "
                             "ledger's validators (cluster.json) in the config's validator_keys and %s"
                             % (answer.get("count", 0), _deploy_hint(port).replace(" first", " again")),
                             EXIT_NOT_DEPLOYED)
    if status == "other-group-key":
        raise ProvisionError("the board's config %s: put the ledger's group_key (cluster.json genesis) in the "
                             "config and %s" % ("names another FROST group key than this ledger" if answer.get("has")
                                                else "lacks the ledger's FROST group_key (threshold headers)",
                                                _deploy_hint(port).replace(" first", " again")), EXIT_NOT_DEPLOYED)
    if status == "no-name":
        raise ProvisionError("no device name: pass --name or set device_name in the board config", EXIT_USAGE)
    if status == "has-key":
        raise ProvisionError("the board already has a key (%s); --new-key would replace it and give the board a "
                             "new device id: add --force to do that" % KEY_FILE, EXIT_USAGE)
    if status == "no-urandom":
        raise ProvisionError("this MicroPython port has no os.urandom, so the board cannot make a key: use a "
                             "build with a hardware random source", EXIT_FAILED)
    if status == "not-provisioned":
        raise ProvisionError("the board on %s has no key and proof yet: run `ledgerlink provision` without "
                             "--check" % port, EXIT_FAILED)
    if status == "bad-proof":
        raise ProvisionError("the proof on the board does NOT verify on the board: %s" % answer.get("error"))
    raise ProvisionError("unexpected answer from the board: %r" % (answer,))


def _group_hex(ctx: LedgerContext) -> str | None:
    """The ledger's FROST group key as a board config holds it (hex), None for a chain without one."""
    return ctx.group_key.hex() if ctx.group_key is not None else None


def _context(args: argparse.Namespace) -> LedgerContext:
    try:
        return LedgerContext(args)
    except admin.AdminError as exc:
        raise ProvisionError(str(exc), exc.status) from None


def _ledger(call: Callable[[], Any]) -> Any:
    """Run an admin call, mapping its errors to provision's exit codes."""
    try:
        return call()
    except admin.AdminError as exc:
        status = EXIT_LEDGER if exc.status == admin.EXIT_UNAVAILABLE else exc.status
        raise ProvisionError(str(exc), status) from None


def _check_ledger(ctx: LedgerContext) -> None:
    res = _ledger(lambda: ctx.call("validators"))
    answered = [bytes(k) for _, k in sorted(res.get("validators") or [])] if res.get("ok") else None
    if res.get("chain_id") != ctx.chain_id or answered != ctx.validators:
        raise ProvisionError("the ledger's nodes name another chain or validator set than the trusted one in %s: "
                             "check --cluster" % ctx.cluster_path)


def _existing_record(ctx: LedgerContext, dev: bytes) -> Any:
    if not _ledger(lambda: ctx.call("latest")).get("ok"):
        return None
    return _ledger(lambda: ctx.proven_record(RecordKind.DEVICE, dev))[0]


def _active_record_of(record: Any, dev: bytes, pub: bytes) -> bool:
    return isinstance(record, dict) and record.get(1) == dev and record.get(2) == pub \
        and record.get(5) == DeviceStatus.ACTIVE


def provision(args: argparse.Namespace, out: Callable[[str], None] = print) -> int:
    if not args.port:
        raise ProvisionError("--port is required: the board's serial port (/dev/ttyUSB0, COM3; list them with "
                             "`mpremote connect list`) or socket://127.0.0.1:PORT for a virtual board", EXIT_USAGE)
    config_path = DEFAULT_CONFIG
    if args.board is not None:
        try:
            profile = deploy.load_profile(args.board)
        except deploy.DeployError as exc:
            raise ProvisionError(str(exc), EXIT_USAGE) from None
        if profile["runtime"] != "micropython":
            raise ProvisionError("board %s runs CPython: make the key on it with `ledgerlink admin keygen` and "
                                 "`ledgerlink admin request`, then `ledgerlink admin register --request`"
                                 % args.board, EXIT_USAGE)
        config_path = deploy.config_target(profile)
    role = admin.ROLES.get(args.role)
    if role is None:
        raise ProvisionError("--role %r is not one of %s" % (args.role, ", ".join(admin.ROLES)), EXIT_USAGE)
    if args.new_key and args.check:
        raise ProvisionError("--check only verifies what the board stores; it cannot be combined with --new-key",
                             EXIT_USAGE)
    if args.rotate_key and (args.new_key or args.check):
        raise ProvisionError("--rotate-key keeps the board's device id and replaces its key on the ledger; it "
                             "cannot be combined with --new-key or --check", EXIT_USAGE)
    board = Board(args.port, config_path)
    if args.check:
        return check(board, out)
    if args.rotate_key:
        return rotate_key(args, board, out)

    ctx = _context(args)
    try:
        try:
            admin_priv = ctx.admin_key()
        except admin.AdminError as exc:
            raise ProvisionError("%s: pass the admin's key with --admin-key FILE" % exc, EXIT_USAGE) from None
        _check_ledger(ctx)
        out("ledger %r answers; %d validators trusted from %s" % (ctx.chain_id, len(ctx.validators),
                                                                 ctx.cluster_path))
        answer = board.run(PREPARE, {
            "validators": [k.hex() for k in ctx.validators], "group_key": _group_hex(ctx), "name": args.name,
            "model": args.model,
            "location": args.location, "role": role, "time_ms": admin.now_ms(), "new_key": args.new_key,
            "force": args.force})
        _board_status(answer, args.port)
        made, prepared = answer["key"], answer
        out({"kept": "the board keeps its key",
             "resumed": "the board reuses the key made by an earlier unfinished provision",
             "new": "the board made a new key pair"}[made]
            + " (the private key stays on the board in %s)" % (KEY_FILE if made == "kept" else PENDING_KEY_FILE))
        request = bytes.fromhex(answer["request"])
        try:
            payload = admin.check_request(request)
        except admin.AdminError:
            raise ProvisionError("the board's registration request does not verify (its proof of possession "
                                 "does not check): the library on the board may be damaged; %s"
                                 % _deploy_hint(args.port).replace(" first", " again")) from None
        pub, dev = payload[2], payload[1]
        if pub.hex() != answer["public_key"]:
            raise ProvisionError("the board's request is for another key than the one it reported")
        out("device %s, public key %s" % (dev.hex(), pub.hex()))

        tx_id = None
        record = _existing_record(ctx, dev)
        if record is not None:
            if not _active_record_of(record, dev, pub):
                raise ProvisionError("device %s is on the ledger but not active (banned?): unban it with "
                                     "`ledgerlink admin unban %s`, or give the board a new key with --new-key "
                                     "--force" % (dev.hex(), dev.hex()))
            out("already registered on the ledger; storing a fresh proof of its record")
        else:
            tx = enc.register_tx(ctx.chain_id, admin_priv, request, admin.now_ms())
            try:
                res, line = _ledger(lambda: ctx.submit(tx, "registration"))
            except ProvisionError as exc:
                if made == "new" and " refused by the ledger" in str(exc):
                    board.run(DISCARD, {"public_key": pub.hex()})
                    raise ProvisionError(str(exc) + "; the board's new key was removed again", exc.status) from None
                raise
            tx_id = enc.tx_id(tx)
            out("registered with role %s at height %d" % (admin.role_name(role), res["height"]))
            out(line)

        record, header, votes = _ledger(lambda: ctx.proven_record(RecordKind.DEVICE, dev))
        if not _active_record_of(record, dev, pub):
            raise ProvisionError("the ledger's proven record of %s does not hold the board's key" % dev.hex())
        out("device record " + ctx.proof_line(header, votes))
        raw_proof = ctx.last_record["proof"]
    finally:
        ctx.close()

    from ledgerlink.core import cbor
    from ledgerlink.protocol import device_protocol

    doc: dict[int, Any] = {1: ctx.chain_id, 2: dev, 3: cbor.dumps(raw_proof)}
    if tx_id is not None:
        doc[4] = tx_id
    ident = {"device_id": dev.hex(), "public_key": pub.hex(), "chain_id": ctx.chain_id, "height": header.height}
    login = _broker_login(ctx, dev, role, out)
    answer = board.run(COMMIT, {"public_key": pub.hex(), "use_pending": made != "kept",
                                "proof_data": cbor.dumps(doc).hex(), "id_data": json.dumps(ident, sort_keys=True),
                                "mqtt_data": json.dumps(login) if login else "",
                                "commands_data": device_protocol.encode_commands(0, {}).hex()})
    if answer.get("status") == "key-changed":
        raise ProvisionError("the key on the board changed while provisioning: rerun provision")
    _board_status(answer, args.port)
    out("the board verified its proof (header %d) and stored %s and %s%s" % (
        answer["height"], PROOF_FILE, ID_FILE, " and its broker login in %s" % MQTT_FILE if login else ""))
    if made != "kept" and prepared["had_key"]:
        out("the board's old key was replaced; its old device id stays registered until you ban it "
            "(`ledgerlink admin ban OLD_DEVICE_ID`)")
    out("provisioned device %s" % dev.hex())
    return EXIT_OK


def rotate_key(args: argparse.Namespace, board: Board, out: Callable[[str], None] = print) -> int:
    """``--rotate-key``: the board makes a new key pair and signs the rotation of its key on the ledger (with
    its current key, the new key's proof of possession); the host submits it, and once the ledger proves the
    board's record holds the new key the board checks that proof itself, takes the new key and computes its
    new broker password (``ledgerlink.protocol.broker_login``: the one the site gives the account when it
    follows the rotation). The device id stays. A run that stopped half way resumes with the same new key:
    one the ledger already holds is not submitted again."""
    from ledgerlink.core import cbor

    ctx = _context(args)
    try:
        _check_ledger(ctx)
        out("ledger %r answers; %d validators trusted from %s" % (ctx.chain_id, len(ctx.validators),
                                                                 ctx.cluster_path))
        answer = board.run(ROTATE, {"validators": [k.hex() for k in ctx.validators], "group_key": _group_hex(ctx),
                                    "chain_id": ctx.chain_id,
                                    "time_ms": admin.now_ms()})
        _board_status(answer, args.port)
        dev, pub, new_pub = (bytes.fromhex(answer[k]) for k in ("device_id", "public_key", "new_public_key"))
        tx = bytes.fromhex(answer["tx"])
        out("device %s: %s %s (the private key stays on the board in %s)" % (
            dev.hex(), "the board made the new key" if answer["key"] == "new" else
            "the board reuses the new key of an earlier unfinished rotation", new_pub.hex(), PENDING_KEY_FILE))
        record = _existing_record(ctx, dev)
        if _active_record_of(record, dev, new_pub):
            out("the ledger already holds the board's new key (an earlier run's rotation)")
        elif _active_record_of(record, dev, pub):
            try:
                res, line = _ledger(lambda: ctx.submit(tx, "key rotation"))
            except ProvisionError as exc:
                if answer["key"] == "new" and " refused by the ledger" in str(exc):
                    board.run(DISCARD, {"public_key": new_pub.hex()})
                    raise ProvisionError(str(exc) + "; the board's new key was removed again", exc.status) from None
                raise
            out("key rotated at height %d" % res["height"])
            out(line)
        else:
            raise ProvisionError("the ledger holds no active record of device %s with the board's key: check "
                                 "`ledgerlink admin show %s`" % (dev.hex(), dev.hex()))
        record, header, votes = _ledger(lambda: ctx.proven_record(RecordKind.DEVICE, dev))
        if not _active_record_of(record, dev, new_pub):
            raise ProvisionError("the ledger's proven record of %s does not hold the board's new key" % dev.hex())
        out("device record " + ctx.proof_line(header, votes))
        raw_proof = ctx.last_record["proof"]
    finally:
        ctx.close()
    ident = {"device_id": dev.hex(), "public_key": new_pub.hex(), "chain_id": ctx.chain_id, "height": header.height,
             "key_rotated": True}
    answer = board.run(ROTATE_COMMIT, {"public_key": new_pub.hex(),
                                       "proof_data": cbor.dumps({1: ctx.chain_id, 2: dev,
                                                                 3: cbor.dumps(raw_proof)}).hex(),
                                       "id_data": json.dumps(ident, sort_keys=True)})
    if answer.get("status") == "key-changed":
        raise ProvisionError("the new key on the board changed while rotating: rerun provision --rotate-key")
    _board_status(answer, args.port)
    out("the board verified its proof (header %d), took its new key%s" % (
        answer["height"], " and computed its new broker password into %s (the site sets the same one when it "
        "follows the rotation)" % MQTT_FILE if answer["login"] else ""))
    out("rotated the key of device %s (version %d)" % (dev.hex(), record.get(8, 1)))
    return EXIT_OK


def _broker_login(ctx: LedgerContext, dev: bytes, role: int, out: Callable[[str], None]) -> dict[str, str] | None:
    """The device's broker account, made in the site's broker folder (``data_dir/broker`` beside the ledger
    folder of ``ledgerlink up``) when there is one; None otherwise (an external broker's own accounts)."""
    from ledgerlink.tools.broker_access import ROLE_CONTROLLER, AccessError, SiteAccess

    access = SiteAccess.beside(ctx.cluster_path)
    if access is None:
        out("no broker accounts beside %s: give the board a login of your broker's own" % ctx.cluster_path)
        return None
    try:
        login = dict(access.add_device(dev, "controller" if role == ROLE_CONTROLLER else "device"),
                     login_key=access.login_public().hex())
    except (OSError, AccessError) as exc:
        raise ProvisionError("the device's broker account could not be made in %s: %s" % (access.folder, exc)) from None
    out("broker account %s (its password also in %s, mode 0600)"
        % (login["username"], access.credentials_path(login["username"])))
    return login


def site_device_config(up_config: str, name: str, broker_host: str | None = None,
                       wifi_file: str = "~/.config/ledgerlink/wifi.json") -> dict[str, Any]:
    """The device config (what ``ledgerlink deploy --config`` takes) of the site a ``ledgerlink up`` config
    names, from what its first run made: broker address, site, chain id, validator keys (and the FROST group
    key when the ledger has one: the device then checks threshold-certified headers), the fog CA key."""
    from ledgerlink.core.backend import get_backend
    from ledgerlink.tools import up

    try:
        cfg = up.load_config(up_config)
        cluster = json.loads(cfg.cluster_path.read_text())
        ca_key = up.read_key(cfg.ledger_dir / "keys" / "gw-ca.key", "fog CA key")
        gateway_key = up.read_key(cfg.ledger_dir / "keys" / "gateway.key", "gateway key")
    except up.ConfigError as exc:
        raise ProvisionError("%s: start the site once with `ledgerlink up --config %s`" % (exc, up_config),
                             EXIT_USAGE) from None
    except OSError as exc:
        raise ProvisionError("the site of %s has not run yet (%s): start it once with `ledgerlink up --config %s`"
                             % (up_config, exc.strerror, up_config), EXIT_USAGE) from None
    if cfg.broker_external is not None:
        host, port = cfg.broker_external
    else:
        runtime = cfg.data_dir / "broker" / "runtime.json"        # the port the broker got (port 0: a free one)
        port = json.loads(runtime.read_text())["port"] if runtime.is_file() else cfg.broker_port
        host = cfg.broker_host
    host = broker_host or host
    if host in ("0.0.0.0", "::", ""):
        raise ProvisionError("the broker listens on all addresses (%s): give the one devices reach it at with "
                             "--broker-host" % host, EXIT_USAGE)
    be = get_backend("cpython")
    group = (cluster.get("genesis") or {}).get("group_key")
    return {"broker": {"host": host, "port": port, "tls": False}, "site": cfg.site, "device_name": name,
            "gateway_id": enc.device_id(be.public_key(gateway_key, True)).hex(), "chain_id": cluster["chain_id"],
            "ca_public": be.public_key(ca_key, True).hex(), "mode": "session",
            "validator_keys": list(cluster["validators"]), **({"group_key": group} if group else {}),
            "wifi_file": wifi_file}


def write_config(args: argparse.Namespace, out: Callable[[str], None] = print) -> int:
    """``--write-config FILE``: the device config from the site of ``--up-config``, for ``ledgerlink deploy``."""
    if not args.up_config or not args.name:
        raise ProvisionError("--write-config needs --up-config (the site) and --name (the device)", EXIT_USAGE)
    config = site_device_config(args.up_config, args.name, args.broker_host, args.wifi_file)
    try:
        with open(args.write_config, "x") as f:
            f.write(json.dumps(config, indent=2) + "\n")
    except FileExistsError:
        raise ProvisionError("%s exists: not overwriting a device config (remove it first)" % args.write_config,
                             EXIT_USAGE) from None
    out("wrote %s: broker %s:%d, site %r, chain %r, %d validator keys, fog CA key %s"
        % (args.write_config, config["broker"]["host"], config["broker"]["port"], config["site"],
           config["chain_id"], len(config["validator_keys"]), config["ca_public"]))
    out("next: ledgerlink deploy --config %s --board BOARD --port PORT, then ledgerlink provision --port PORT "
        "--board BOARD --up-config %s" % (args.write_config, args.up_config))
    return EXIT_OK


def check(board: Board, out: Callable[[str], None] = print) -> int:
    answer = board.run(CHECK, {})
    _board_status(answer, board.port)
    out("the board verified its stored proof: device %s registered, header %d certified by its %d trusted "
        "validators" % (answer["device_id"], answer["height"], answer["validators"]))
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ledgerlink provision", description=__doc__.split("\n")[0].replace("`", ""))
    p.add_argument("--port", help="the board: serial port (/dev/ttyUSB0) or socket://127.0.0.1:PORT")
    p.add_argument("--board", help="board profile (%s); sets where the board config is" % ", ".join(deploy.board_names()))
    where = p.add_argument_group("ledger")
    where.add_argument("--cluster", metavar="FILE", help="cluster config (cluster.json): nodes and trusted validators")
    where.add_argument("--up-config", metavar="FILE", help="the `ledgerlink up` config (its cluster.json and admin_key)")
    where.add_argument("--admin-key", metavar="FILE", help="admin private key file (hex)")
    where.add_argument("--timeout", type=float, default=5.0, metavar="S", help="seconds per node request (default 5)")
    dev = p.add_argument_group("device")
    dev.add_argument("--role", default="sensor", help="one of %s (default sensor)" % ", ".join(admin.ROLES))
    dev.add_argument("--name", help="device name (default: device_name of the board config)")
    dev.add_argument("--model", help="device model")
    dev.add_argument("--location", help="where the device is")
    dev.add_argument("--new-key", action="store_true", help="replace the board's key with a new one (needs --force)")
    dev.add_argument("--force", action="store_true", help="allow --new-key to replace an existing key")
    p.add_argument("--check", action="store_true", help="only re-verify the proof stored on the board")
    p.add_argument("--rotate-key", action="store_true",
                   help="a new key pair made on the board replaces its key on the ledger (device id kept); the "
                        "board computes its new broker password")
    conf = p.add_argument_group("device config (no board needed)")
    conf.add_argument("--write-config", metavar="FILE",
                      help="write the device config for `ledgerlink deploy --config` from the site of --up-config "
                           "(broker, site, chain_id, ca_public, validator_keys), named --name; then stop")
    conf.add_argument("--broker-host", metavar="HOST",
                      help="--write-config: the broker address devices connect to (default: the up config's)")
    conf.add_argument("--wifi-file", default="~/.config/ledgerlink/wifi.json", metavar="FILE",
                      help="--write-config: the Wi-Fi file deploy reads on the host (default %(default)s)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.write_config:
            return write_config(args)
        return provision(args)
    except ProvisionError as exc:
        print("ledgerlink provision: error: %s" % exc, file=sys.stderr)
        return exc.status


if __name__ == "__main__":
    sys.exit(main())
