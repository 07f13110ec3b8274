"""``ledgerlink admin``: device registry, firmware records and ledger checks against a running ledger.

The ledger is named by its cluster config (``--cluster FILE``, or ``--up-config FILE`` of ``ledgerlink up``);
that file is also the trust anchor: every header, record and receipt shown is checked with
``ledgerlink.protocol.spv`` against its chain id and validator keys (2f+1 commit signatures, Merkle
proofs), so a lying node is caught rather than believed. Transactions are signed with the admin key
file (``--admin-key``; default: the up config's ``admin_key`` or ``keys/admin.key`` beside the cluster
config), firmware records with a maintenance key.

Registration needs the device's own proof of possession: the device makes its key pair and a signed
``registration-request`` (``ledgerlink admin keygen`` and ``ledgerlink admin request`` on a CPython
device, ``DeviceCore.registration_request`` on a board) and only the request file travels to the admin;
``register --demo-key FILE`` makes a key pair here instead, for tests. A device that publishes its
request on its ``reg`` topic has it checked and held by the gateway: ``pending`` lists the held
requests (from the gateway's ``/api/registrations``; ``--gateway URL``, or the up config's dashboard
address) with each proof of possession checked here again and each device's ledger status proven, and
``register --pending DEVICE_ID`` registers one of them. The gateway is not trusted for any of it: a
request it altered fails its proof of possession. ``rotate-key``, run on a CPython device, replaces its
key on the ledger and writes its new broker password into its login file.

Exit status: 0 done, 1 refused by the ledger / not found / does not verify, 2 bad arguments, config or
key file, 3 no ledger node answered. Errors are one line on stderr. Private keys are never printed.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import string
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable, Sequence

from ledgerlink.core import cbor, cose
from ledgerlink.protocol import spv
from ledgerlink.core.backend import get_backend
from ledgerlink.core.errors import LedgerlinkError
from ledgerlink.ledger.state import encoding as enc
from ledgerlink.ledger.state.codes import DeviceStatus, ImageType, RecordKind, Role, reason_text
from ledgerlink.protocol.ledger_tx import reason_name
from ledgerlink.tools.up import ConfigError, load_config, read_key
from ledgerlink.tools import admin_trace
from ledgerlink.tools import admin_release
from ledgerlink.tools import admin_validators

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_UNAVAILABLE = 3
DEFAULT_HEADERS = 10
MAX_HEADERS = 1000
ROLES = {r.name.lower(): int(r) for r in Role}


class AdminError(Exception):
    """A failure with its exit status."""

    def __init__(self, message: str, status: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.status = status


class NoCertifiedBlock(AdminError):
    """The ledger has committed nothing yet, so no record (or absence) can be proven."""


def _usage(message: str) -> AdminError:
    return AdminError(message, EXIT_USAGE)


def now_ms() -> int:
    return int(time.time() * 1000)


def fmt_time(ms: int) -> str:
    return datetime.datetime.fromtimestamp(ms / 1000, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + " UTC"



def role_name(role: Any) -> str:
    try:
        return Role(role).name.lower()
    except ValueError:
        return "role %r" % (role,)


def parse_device_id(text: str) -> bytes:
    try:
        dev = bytes.fromhex(text)
    except ValueError:
        dev = b""
    if len(dev) != enc.DEVICE_ID_LEN:
        raise _usage("device id %r must be 32 hex digits (16 bytes)" % text)
    return dev


def read_blob(path: str, what: str) -> bytes:
    """File contents: raw bytes, or hex text (whitespace ignored) decoded."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise _usage("cannot read %s file %s: %s" % (what, path, exc.strerror or exc)) from None
    text = b"".join(data.split())
    if text and len(text) % 2 == 0 and all(c in string.hexdigits.encode() for c in text):
        return bytes.fromhex(text.decode())
    return data


def write_new_key(path: str) -> bytes:
    """Make a private key and write it (hex, mode 0600) to a file that must not exist yet."""
    from ledgerlink.ledger.cluster import write_key

    p = Path(path)
    if p.exists():
        raise _usage("%s exists: not overwriting a key file" % p)
    if not p.parent.is_dir():
        raise _usage("folder %s does not exist" % p.parent)
    priv = get_backend("cpython").generate_private_key()
    write_key(p, priv)
    return priv


def load_key(path: str | Path, what: str) -> bytes:
    try:
        return read_key(Path(path), what)
    except ConfigError as exc:
        raise _usage(str(exc)) from None


# --- context: trusted set, ledger client, keys ---------------------------------------------------------


class Context:
    """What the subcommands share: the cluster config (trust anchor), key paths and a lazy client."""

    def __init__(self, args: argparse.Namespace) -> None:
        from ledgerlink.ledger.transport import ClusterConfig

        self.args = args
        admin_default: Path | None = None
        if args.up_config and args.cluster:
            raise _usage("give --cluster or --up-config, not both")
        if args.up_config:
            try:
                up = load_config(args.up_config)
            except ConfigError as exc:
                raise _usage(str(exc)) from None
            self.cluster_path = up.cluster_path
            admin_default = up.admin_key_path
        elif args.cluster:
            self.cluster_path = Path(args.cluster)
        else:
            raise _usage("name the ledger: --cluster CLUSTER.json or --up-config UP.json")
        try:
            self.config = ClusterConfig.load(self.cluster_path)
        except FileNotFoundError:
            raise _usage("cluster config %s does not exist (has `ledgerlink up` run with this data_dir?)"
                         % self.cluster_path) from None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise _usage("cluster config %s is not usable: %s" % (self.cluster_path, exc)) from None
        self.gateway_url: str | None = getattr(args, "gateway", None)
        if self.gateway_url is None and args.up_config and up.http_port:
            host = "127.0.0.1" if up.http_host in ("0.0.0.0", "::", "") else up.http_host
            self.gateway_url = "http://%s:%d" % (host, up.http_port)
        self.chain_id = self.config.chain_id
        self.validators = list(self.config.validators)
        group = self.config.genesis.get("group_key")
        self.group_key = bytes.fromhex(group) if group else None      # FROST group key: threshold headers
        self.admin_key_path = Path(args.admin_key) if args.admin_key else (
            admin_default or self.cluster_path.parent / "keys" / "admin.key")
        self._client: Any = None
        self.crypto = get_backend("cpython")

    @property
    def client(self) -> Any:
        if self._client is None:
            from ledgerlink.ledger.client import LedgerClient

            self._client = LedgerClient(self.config, timeout=self.args.timeout)
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def held_registrations(self) -> list[dict]:
        """The gateway's held registration requests (unchecked: every caller checks each request)."""
        if not self.gateway_url:
            raise _usage("name the gateway: --gateway URL (its dashboard address) or --up-config UP.json with "
                         "gateway.http_port set")
        url = self.gateway_url.rstrip("/") + "/api/registrations"
        request = urllib.request.Request(url)
        token_file = self.cluster_path.resolve().parent.parent / "dashboard.token"
        if token_file.exists():                                       # ``ledgerlink up``'s dashboard login
            request.add_header("Authorization", "Bearer " + token_file.read_text().strip())
        try:
            with urllib.request.urlopen(request, timeout=self.args.timeout) as resp:
                held = json.loads(resp.read(4 << 20))["registrations"]
            if not isinstance(held, list):
                raise TypeError("registrations is not a list")
        except urllib.error.HTTPError as exc:
            raise AdminError("gateway at %s answered %d for /api/registrations (an older gateway, or its "
                             "dashboard is off)" % (self.gateway_url, exc.code), EXIT_UNAVAILABLE) from None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise AdminError("no usable answer from the gateway at %s (%s): is it running with its dashboard on?"
                             % (self.gateway_url, exc), EXIT_UNAVAILABLE) from None
        return [h for h in held if isinstance(h, dict)]

    def admin_key(self) -> bytes:
        return load_key(self.admin_key_path, "admin key")

    def call(self, op: str, *args: Any) -> dict:
        """A ledger request; AdminError(3) when no node answers, AdminError(1) on an error answer."""
        from ledgerlink.ledger.client import LedgerUnavailable

        try:
            res = getattr(self.client, op)(*args)
        except LedgerUnavailable:
            ports = ", ".join("%s:%d" % (a.host, a.client_port) for a in self.config.nodes)
            raise AdminError("no ledger node answered at %s (cluster %s): is the ledger running?"
                             % (ports, self.cluster_path), EXIT_UNAVAILABLE) from None
        return res

    # --- verified reads -------------------------------------------------------------------------------

    def verify_header(self, certified: Any) -> tuple[spv.Header, int]:
        """(header, number of commit votes) of a certified header checked against the trusted set."""
        try:
            header = spv.verify_certified_header(cbor.dumps(certified), self.chain_id, self.validators,
                                                 group_key=self.group_key)
        except (LedgerlinkError, TypeError) as exc:
            raise AdminError("certified header from the ledger does NOT verify against the trusted validator "
                             "set: %s" % exc) from None
        return header, len(certified[1][3])

    def proven_record(self, kind: int, record_id: Any) -> tuple[Any, spv.Header, int]:
        """(decoded record or None for proven absence, header, votes), checked with spv."""
        res = self.call("record", int(kind), record_id)
        if not res.get("ok"):
            if res.get("error") == "no certified block yet":
                raise NoCertifiedBlock("the ledger has no certified block yet (no transaction committed so far), "
                                 "so nothing can be proven; try again after the first transaction")
            raise AdminError("ledger error: %s" % res.get("error"))
        proof = res.get("proof")
        try:
            header, key, value = spv.verify_record_proof(cbor.dumps(proof), self.chain_id, self.validators,
                                                        group_key=self.group_key)
        except (LedgerlinkError, TypeError) as exc:
            raise AdminError("record proof from the ledger does NOT verify: %s" % exc) from None
        if key != enc.state_key(kind, record_id):
            raise AdminError("record proof from the ledger is for another state key")
        record = None
        if value is not None:
            try:
                record = cbor.loads(value)
            except LedgerlinkError as exc:
                raise AdminError("proven record is not CBOR: %s" % exc) from None
        cert = proof[1][1]                    # votes, or a threshold certificate: one signature by t = 2f+1 signers
        return record, header, len(cert[3]) if len(cert) == 4 else spv.quorum(len(self.validators))

    def proof_line(self, header: spv.Header, votes: int) -> str:
        n = len(self.validators)
        return "proof verified against header %d (%d of %d validator signatures; 2f+1 = %d)" % (
            header.height, votes, n, spv.quorum(n))

    def submit(self, tx: bytes, what: str) -> tuple[dict, str]:
        """Submit; AdminError with the reason code unless committed with code 0. Returns (result, proof line)."""
        res = self.call("submit", tx)
        if not res.get("ok"):
            raise AdminError("%s: ledger error: %s" % (what, res.get("error")))
        status, code = res.get("status"), int(res.get("code") or 0)
        if status in ("committed", "refused") and (status == "refused" or code != 0):
            raise AdminError("%s refused by the ledger: code %d %s (%s)" % (what, code, reason_name(code),
                                                                          reason_text(code)))
        if status != "committed":
            raise AdminError("%s: transaction %s not committed in time (status %s); check again with `show`"
                             % (what, enc.tx_id(tx).hex(), status))
        return res, self.tx_line(tx)

    def tx_line(self, tx: bytes) -> str:
        p = self.call("tx_proof", enc.tx_id(tx))
        if not p.get("ok") or p.get("tx") != tx:
            raise AdminError("the ledger gives no inclusion proof for transaction %s" % enc.tx_id(tx).hex())
        header, votes = self.verify_header(p["certified_header"])
        try:
            spv.verify_tx_inclusion(header, tx, p["index"], p["size"], p["proof"])
        except (LedgerlinkError, TypeError, KeyError) as exc:
            raise AdminError("inclusion proof of the transaction does NOT verify: %s" % exc) from None
        return "tx %s is %d of %d in block %d; inclusion %s" % (
            enc.tx_id(tx).hex(), p["index"], p["size"], header.height,
            self.proof_line(header, votes).replace("proof verified", "verified"))


# --- subcommands ----------------------------------------------------------------------------------------


def _attributes(args: argparse.Namespace) -> dict[str, str]:
    attrs = {}
    for name in ("name", "model", "location"):
        value = getattr(args, name)
        if value is not None:
            attrs[name] = value
    return attrs


def _role(text: str) -> int:
    if text not in ROLES:
        raise _usage("role %r is not one of %s" % (text, ", ".join(ROLES)))
    return ROLES[text]


def check_request(request: bytes) -> dict:
    """Decode a registration request and check its proof of possession locally; return its payload."""
    try:
        frame = cose.decode_sign1(request)
        payload = cbor.loads(frame.payload)
        pub = payload[2]
        cose.verify_sign1(request, pub)
        ok = isinstance(payload, dict) and enc.device_id(pub) == payload[1] == frame.kid
    except (LedgerlinkError, KeyError, TypeError, IndexError):
        ok = False
    if not ok:
        raise AdminError("the registration request is not a device's signed request (its proof of possession "
                         "does not check)", EXIT_USAGE)
    return payload


def _held_request(entry: dict) -> bytes | None:
    try:
        return bytes.fromhex(entry["request"])
    except (KeyError, TypeError, ValueError):
        return None


def _kid(request: bytes) -> bytes | None:
    try:
        return cose.decode_sign1(request).kid
    except LedgerlinkError:
        return None


def cmd_pending(ctx: Context, args: argparse.Namespace) -> int:
    held = ctx.held_registrations()
    print("%d registration request(s) held by the gateway at %s" % (len(held), ctx.gateway_url))
    for entry in held:
        request = _held_request(entry)
        try:
            payload = check_request(request or b"")
        except AdminError:
            print("  %s  INVALID: its proof of possession does not check (altered on the way?)"
                  % str(entry.get("device"))[:32])
            continue
        dev = payload[1]
        try:
            record, header, _ = ctx.proven_record(RecordKind.DEVICE, dev)
            status = "waiting" if record is None else "registered already (ledger height %d)" % header.height
        except NoCertifiedBlock:
            status = "waiting (the ledger has no block yet)"
        print("  %s  %-10s %s; requested %s; %s" % (dev.hex(), role_name(payload.get(3)),
                                                    _attrs_text(payload.get(4) or {}), fmt_time(payload.get(5, 0)),
                                                    status))
    return EXIT_OK


def cmd_register(ctx: Context, args: argparse.Namespace) -> int:
    if sum(1 for x in (args.request, args.demo_key, args.pending) if x) > 1:
        raise _usage("give one of --request FILE (made on the device), --pending DEVICE_ID or --demo-key FILE")
    if args.pending:
        dev = parse_device_id(args.pending)
        found = [r for r in map(_held_request, ctx.held_registrations()) if r is not None and _kid(r) == dev]
        if not found:
            raise AdminError("the gateway at %s holds no registration request of device %s (see `pending`)"
                             % (ctx.gateway_url, dev.hex()))
        args.request = found[0]
    if args.request:
        request = args.request if isinstance(args.request, bytes) else read_blob(args.request, "registration request")
        payload = check_request(request)
        attrs = payload.get(4) or {}
        if args.pubkey is not None and enc.compress_pubkey(_pubkey(args.pubkey)) != enc.compress_pubkey(payload[2]):
            raise _usage("--pubkey differs from the key in the request")
        if args.role is not None and _role(args.role) != payload.get(3):
            raise _usage("the request asks for role %s, not %s" % (role_name(payload.get(3)), args.role))
        for name, value in _attributes(args).items():
            if attrs.get(name) != value:
                raise _usage("the request has %s %r, not %r (the device signed its attributes)"
                             % (name, attrs.get(name), value))
    elif args.demo_key:
        if args.pubkey is not None:
            raise _usage("--demo-key makes a new key; it cannot be combined with --pubkey")
        if args.name is None:
            raise _usage("--name is required")
        role = _role(args.role or "sensor")
        priv = write_new_key(args.demo_key)
        request = enc.registration_request(priv, role, _attributes(args), now_ms())
        payload = cbor.loads(cose.decode_sign1(request).payload)
        print("demo key: made a key pair here and wrote its private key to %s (testing only: a real device "
              "makes its own key and request)" % args.demo_key)
    else:
        raise _usage("registration needs the device's proof of possession: make a request on the device "
                     "(`ledgerlink admin request --key DEVICE.key --role sensor --name N --out req.cbor`) and "
                     "pass --request req.cbor, or use --demo-key FILE for a test key made here")
    tx = enc.register_tx(ctx.chain_id, ctx.admin_key(), request, now_ms())
    res, line = ctx.submit(tx, "registration")
    dev = payload[1]
    print("registered device %s: role %s, %s; committed at height %d" % (
        dev.hex(), role_name(payload[3]), _attrs_text(payload.get(4) or {}), res["height"]))
    print(line)
    access = _broker_accounts(ctx)
    if access is not None:
        [login] = access.add_registered([request])
        print("broker account %s: its login is in %s (mode 0600); give it to the device"
              % (login["username"], access.credentials_path(login["username"])))
    return EXIT_OK


def _broker_accounts(ctx: Context) -> Any:
    """The site's broker accounts beside the cluster config (``ledgerlink up``'s data_dir), or None."""
    from ledgerlink.tools.broker_access import SiteAccess

    return SiteAccess.beside(ctx.cluster_path)


def cmd_broker_login(ctx: Context, args: argparse.Namespace) -> int:
    """Make a device's broker account before it registers (or give it a new password with --rotate)."""
    from ledgerlink.tools.broker_access import AccessError

    dev = parse_device_id(args.device_id)
    access = _broker_accounts(ctx)
    if access is None:
        raise AdminError("no broker accounts beside %s (a site of `ledgerlink up` has them in data_dir/broker)"
                         % ctx.cluster_path, EXIT_USAGE)
    try:
        login = access.add_device(dev, args.role, rotate=args.rotate)
    except AccessError as exc:
        raise AdminError(str(exc)) from None
    print("broker account %s (role %s)%s: its login is in %s (mode 0600)" % (
        login["username"], args.role, ", new password" if args.rotate else "",
        access.credentials_path(login["username"])))
    return EXIT_OK


def _pubkey(text: str) -> bytes:
    try:
        return enc.compress_pubkey(bytes.fromhex(text))
    except (ValueError, LedgerlinkError):
        raise _usage("--pubkey must be a SEC 1 P-256 public key in hex (33 or 65 bytes)") from None


def _attrs_text(attrs: dict) -> str:
    return " ".join("%s=%r" % (k, v) for k, v in sorted(attrs.items(), key=lambda kv: str(kv[0]))) or "no attributes"


def _status_change(change: Any) -> str:
    if not isinstance(change, dict):
        return "?"
    by = change.get(2)
    return "%s by %s: %r" % (fmt_time(change.get(1, 0)), by.hex() if isinstance(by, bytes) else by, change.get(3))


def cmd_ban(ctx: Context, args: argparse.Namespace, unban: bool = False) -> int:
    dev = parse_device_id(args.device_id)
    reason = args.reason
    if not 1 <= len(reason) <= 256:
        raise _usage("--reason must be 1..256 characters")
    build = enc.unban_tx if unban else enc.ban_tx
    tx = build(ctx.chain_id, ctx.admin_key(), dev, reason, now_ms())
    res, line = ctx.submit(tx, "unban" if unban else "ban")
    print("%s device %s (%r); committed at height %d" % ("unbanned" if unban else "banned", dev.hex(), reason,
                                                          res["height"]))
    print(line)
    access = _broker_accounts(ctx)
    if access is not None and access.set_disabled("ll-" + dev.hex(), not unban):
        print("broker account ll-%s %s" % (dev.hex(), "enabled again" if unban else "disabled: disconnected now"))
    return EXIT_OK


def cmd_show(ctx: Context, args: argparse.Namespace) -> int:
    dev = parse_device_id(args.device_id)
    record, header, votes = ctx.proven_record(RecordKind.DEVICE, dev)
    if record is None:
        print("device %s is not registered; absence %s" % (dev.hex(), ctx.proof_line(header, votes)))
        return EXIT_FAILED
    if not isinstance(record, dict) or record.get(1) != dev:
        raise AdminError("the proven record is not a device record of %s" % dev.hex())
    status = record.get(5)
    status_text = {DeviceStatus.ACTIVE: "active", DeviceStatus.BANNED: "banned"}.get(status, "status %r" % status)
    by = record.get(7) or b""
    print("device %s" % dev.hex())
    print("  status      %s" % status_text)
    print("  role        %s" % role_name(record.get(3)))
    print("  key         %s (version %s)" % (record[2].hex(), record.get(8)))
    print("  attributes  %s" % _attrs_text(record.get(4) or {}))
    print("  registered  %s by %s" % (fmt_time(record.get(6, 0)), by.hex() if by else "genesis"))
    if 9 in record:
        print("  last ban    %s" % _status_change(record[9]))
    if 10 in record:
        print("  last unban  %s" % _status_change(record[10]))
    if 11 in record:
        print("  key rotated %s" % fmt_time(record[11]))
    print(ctx.proof_line(header, votes))
    return EXIT_OK


def cmd_firmware(ctx: Context, args: argparse.Namespace) -> int:
    try:
        image = Path(args.image).read_bytes()
    except OSError as exc:
        raise _usage("cannot read image %s: %s" % (args.image, exc.strerror or exc)) from None
    for label, value in (("--version", args.version), ("--class", args.device_class)):
        if not 1 <= len(value) <= 64:
            raise _usage("%s must be 1..64 characters" % label)
    key = load_key(args.maintenance_key, "maintenance key")
    image_hash = hashlib.sha256(image).digest()
    image_type = ImageType.CONFIGURATION if args.type == "configuration" else ImageType.FIRMWARE
    tx = enc.firmware_tx(ctx.chain_id, key, image_hash, args.version, args.device_class, int(image_type), now_ms(),
                         size=len(image))
    res, line = ctx.submit(tx, "firmware record")
    print("%s image %s (%d bytes) version %r for class %r recorded at height %d" % (
        args.type, image_hash.hex(), len(image), args.version, args.device_class, res["height"]))
    print(line)
    record, header, votes = ctx.proven_record(RecordKind.FIRMWARE, image_hash)
    if record is None or record.get(2) != args.version or record.get(3) != args.device_class:
        raise AdminError("the ledger's proven firmware record does not match what was submitted")
    print("firmware record %s" % ctx.proof_line(header, votes))
    return EXIT_OK


def cmd_headers(ctx: Context, args: argparse.Namespace) -> int:
    latest = ctx.call("latest")
    if not latest.get("ok"):
        raise AdminError("the ledger has no certified block yet (no transaction committed so far)")
    top = int(latest["height"])
    hi = top if args.to is None else args.to
    lo = max(0, hi - DEFAULT_HEADERS + 1) if args.from_ is None else args.from_
    if lo < 0 or hi < lo:
        raise _usage("need 0 <= --from <= --to")
    if hi > top:
        raise AdminError("the ledger's newest block is %d; --to %d is beyond it" % (top, hi))
    if hi - lo + 1 > MAX_HEADERS:
        raise _usage("at most %d headers at a time" % MAX_HEADERS)
    previous = None
    print("height  time                        votes  header hash                                                       tx root")
    for h in range(lo, hi + 1):
        res = ctx.call("header", h)
        if not res.get("ok"):
            raise AdminError("ledger error for header %d: %s" % (h, res.get("error")))
        header, votes = ctx.verify_header(res["certified_header"])
        if header.height != h:
            raise AdminError("the ledger answered header %d for height %d" % (header.height, h))
        if previous is not None:
            try:
                spv.verify_header_link(previous, header)
            except LedgerlinkError as exc:
                raise AdminError("header chain broken: %s" % exc) from None
        print("%6d  %s  %d/%d    %s  %s" % (h, fmt_time(header.time_ms), votes, len(ctx.validators),
                                            header.hash.hex(), header.tx_root.hex()[:16]))
        previous = header
    n = len(ctx.validators)
    print("%d header%s %d..%d verified against the trusted validator set of chain %r (each with at least "
          "2f+1 = %d of %d signatures) and linked by prev-hash" % (
              hi - lo + 1, "" if hi == lo else "s", lo, hi, ctx.chain_id, spv.quorum(n), n))
    return EXIT_OK


def cmd_validators(ctx: Context, args: argparse.Namespace) -> int:
    res = ctx.call("validators")
    if not res.get("ok"):
        raise AdminError("ledger error: %s" % res.get("error"))
    answered = [bytes(k) for _, k in sorted(res.get("validators") or [])]
    n = len(ctx.validators)
    print("chain %r, %d validators (f = %d, 2f+1 = %d), trusted set from %s" % (
        ctx.chain_id, n, (n - 1) // 3, spv.quorum(n), ctx.cluster_path))
    for i, key in enumerate(ctx.validators):
        print("  %d  %s  device %s" % (i, key.hex(), enc.device_id(key).hex()))
    if res.get("chain_id") != ctx.chain_id or answered != ctx.validators:
        print("the ledger node names a DIFFERENT validator set (chain %r, %d keys)" % (res.get("chain_id"),
                                                                                     len(answered)))
        return EXIT_FAILED
    latest = ctx.call("latest")
    if latest.get("ok"):
        header, votes = ctx.verify_header(latest["certified_header"])
        print("the ledger names the same set; its newest header %d is signed by it (%d of %d signatures)"
              % (header.height, votes, n))
    else:
        print("the ledger names the same set (no certified block yet to check signatures on)")
    return EXIT_OK


def cmd_verify_receipt(ctx: Context, args: argparse.Namespace) -> int:
    from ledgerlink.gateway.batcher import frame_seq, verify_receipt

    receipt = read_blob(args.receipt, "receipt")
    frame = read_blob(args.frame, "frame")
    try:
        header = verify_receipt(receipt, frame, ctx.chain_id, ctx.validators, group_key=ctx.group_key)
        r = cbor.loads(receipt)
        cert = r[7][1]                      # votes, or one threshold signature standing for t = 2f+1 shares
        votes = len(cert[3]) if len(cert) == 4 else spv.quorum(len(ctx.validators))
    except (LedgerlinkError, KeyError, IndexError, TypeError, AttributeError, ValueError) as exc:
        print("receipt does NOT verify for this frame: %s" % (exc or type(exc).__name__), file=sys.stderr)
        return EXIT_FAILED
    seq = frame_seq(frame)
    print("receipt verified: frame %s (%s) is leaf %d of %d in a batch anchored by transaction %s in block %d"
          % (r[1].hex(), "not a reading" if seq is None else "seq %d" % seq, r[3], r[4],
             enc.tx_id(r[6][1]).hex(), header.height))
    print(ctx.proof_line(header, votes))
    return EXIT_OK


def cmd_keygen(args: argparse.Namespace) -> int:
    priv = write_new_key(args.out)
    pub = get_backend("cpython").public_key(priv, True)
    print("private key written to %s (mode 0600)" % args.out)
    print("public key %s" % pub.hex())
    print("device id  %s" % enc.device_id(pub).hex())
    return EXIT_OK


def cmd_rotate_key(ctx: Context, args: argparse.Namespace) -> int:
    """On a device: rotate its key on the ledger (signed by the current key, with the new key's proof of
    possession) and, with ``--login``, write its new broker login into that file (0600), computed here from
    the new key and the site's broker-login key (``ledgerlink.protocol.broker_login``, the board's code too);
    the site gives the account that password when it follows the rotation, and the old one stops working."""
    from ledgerlink.protocol import broker_login
    from ledgerlink.tools.broker_access import write_private

    priv = load_key(args.key, "device key")
    pub = ctx.crypto.public_key(priv, True)
    dev = parse_device_id(args.device_id) if args.device_id else enc.device_id(pub)
    login = None
    if args.login:
        try:
            login = json.loads(Path(args.login).read_text())
            login_key = bytes.fromhex(login["login_key"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise _usage("login file %s has no usable login_key (the site's broker-login key): %s"
                         % (args.login, exc)) from None
    record, _, _ = ctx.proven_record(RecordKind.DEVICE, dev)
    if record is None or enc.compress_pubkey(record[2]) != pub:
        raise AdminError("the ledger's key of device %s is not the key in %s (after an earlier rotation give "
                         "--device-id)" % (dev.hex(), args.key))
    new_priv = write_new_key(args.new_key)
    try:
        res, line = ctx.submit(enc.rotate_key_tx(ctx.chain_id, priv, new_priv, now_ms(), kid=dev), "key rotation")
    except BaseException:
        Path(args.new_key).unlink()
        raise
    print("rotated the key of device %s: new key %s in %s (mode 0600), version %d; committed at height %d"
          % (dev.hex(), ctx.crypto.public_key(new_priv, True).hex(), args.new_key, record.get(8, 1) + 1,
             res["height"]))
    print(line)
    if login is not None:
        try:
            login.update(broker_login.login(dev, new_priv, login_key, ctx.crypto))
        except (LedgerlinkError, ValueError) as exc:
            raise AdminError("the new broker login could not be computed: %s" % exc) from None
        write_private(Path(args.login), json.dumps(login) + "\n")
        print("broker login %s: new password written to %s (mode 0600); the old one stops working when the site "
              "follows the rotation (within a second)" % (login["username"], args.login))
    return EXIT_OK


def cmd_request(args: argparse.Namespace) -> int:
    priv = load_key(args.key, "device key")
    if args.name is None:
        raise _usage("--name is required")
    out = Path(args.out)
    if out.exists():
        raise _usage("%s exists: not overwriting" % out)
    request = enc.registration_request(priv, _role(args.role), _attributes(args), now_ms())
    out.write_bytes(request)
    pub = get_backend("cpython").public_key(priv, True)
    print("registration request of device %s (role %s, %s) written to %s; give this file to the admin"
          % (enc.device_id(pub).hex(), args.role, _attrs_text(_attributes(args)), out))
    return EXIT_OK


# --- command line -----------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    def ledger_options(parser: argparse.ArgumentParser, suppress: bool) -> None:
        where = parser.add_argument_group("ledger")
        kw: dict[str, Any] = {"default": argparse.SUPPRESS} if suppress else {}
        where.add_argument("--cluster", metavar="FILE", help="cluster config (cluster.json): nodes and trusted "
                           "validators", **kw)
        where.add_argument("--up-config", metavar="FILE", help="the `ledgerlink up` config (its data_dir's "
                           "cluster.json and admin_key)", **kw)
        where.add_argument("--admin-key", metavar="FILE", help="admin private key file (hex)", **kw)
        where.add_argument("--timeout", type=float, metavar="S", help="seconds per node request (default 5)",
                           **(kw or {"default": 5.0}))

    p = argparse.ArgumentParser(prog="ledgerlink admin", description=__doc__.split("\n")[0].replace("`", ""))
    ledger_options(p, False)
    common = argparse.ArgumentParser(add_help=False)
    ledger_options(common, True)
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)
    add = sub.add_parser

    def with_ledger(name: str, **kw: Any) -> argparse.ArgumentParser:
        return add(name, parents=[common], **kw)

    def attributes(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--role", help="one of %s" % ", ".join(ROLES))
        sp.add_argument("--name", help="device name")
        sp.add_argument("--model", help="device model")
        sp.add_argument("--location", help="where the device is")

    r = with_ledger("register", help="register a device from its own signed registration request")
    r.add_argument("--request", metavar="FILE", help="registration request made on the device (CBOR or hex)")
    r.add_argument("--pending", metavar="DEVICE_ID", help="the request of this device held by the gateway (see pending)")
    r.add_argument("--demo-key", metavar="FILE", help="testing: make a key pair here, write its private key to FILE")
    r.add_argument("--pubkey", metavar="HEX", help="the device's public key (checked against the request)")
    attributes(r)
    pd = with_ledger("pending", help="registration requests the gateway holds, checked here, with ledger status")
    pd.add_argument("--gateway", metavar="URL", help="the gateway's dashboard address (default: from --up-config)")
    r.add_argument("--gateway", metavar="URL", help="with --pending: the gateway's dashboard address")
    b = with_ledger("ban", help="ban a device (the gateway refuses it from then on)")
    b.add_argument("device_id", metavar="DEVICE_ID", help="the device id (hex)")
    b.add_argument("--reason", required=True, help="why (1..256 characters; on the ledger)")
    u = with_ledger("unban", help="lift a device's ban")
    u.add_argument("device_id", metavar="DEVICE_ID", help="the device id (hex)")
    u.add_argument("--reason", default="unbanned by admin", help="why (default: unbanned by admin)")
    bl = with_ledger("broker-login", help="make a device's broker account (before it sends its registration "
                                          "request), or give it a new password (--rotate)")
    bl.add_argument("device_id", metavar="DEVICE_ID", help="the device id (hex)")
    bl.add_argument("--role", choices=("device", "controller"), default="device",
                    help="the account's topics: a device's (default) or a controller's")
    bl.add_argument("--rotate", action="store_true", help="a new password (the old one stops working at once)")
    rk = with_ledger("rotate-key", help="on a device: rotate its key on the ledger (and its broker password)")
    rk.add_argument("--key", required=True, metavar="FILE", help="the device's current private key file")
    rk.add_argument("--new-key", required=True, metavar="FILE", help="where to write the new private key (must "
                    "not exist; mode 0600)")
    rk.add_argument("--device-id", metavar="DEVICE_ID", help="the device id (default: from the key; needed after "
                    "an earlier rotation)")
    rk.add_argument("--login", metavar="FILE", help="the device's broker login file (with login_key): its new "
                    "password is written into it")
    s = with_ledger("show", help="a device's record, with its state proof verified")
    s.add_argument("device_id", metavar="DEVICE_ID", help="the device id (hex)")
    f = with_ledger("firmware", help="record a firmware or configuration image (maintenance key)")
    f.add_argument("--image", required=True, metavar="FILE", help="the image file (its hash goes on the ledger)")
    f.add_argument("--version", required=True, help="the image's version string")
    f.add_argument("--class", dest="device_class", required=True, metavar="CLASS", help="device class")
    f.add_argument("--type", choices=("firmware", "configuration"), default="firmware",
                   help="what the image is (default firmware)")
    f.add_argument("--maintenance-key", required=True, metavar="FILE", help="private key of a maintenance device")
    h = with_ledger("headers", help="certified headers, verified and linked")
    h.add_argument("--from", dest="from_", type=int, metavar="H", help="first height (default: the last 10 up to --to)")
    h.add_argument("--to", type=int, metavar="H", help="last height (default: the ledger's height)")
    with_ledger("validators", help="the validator set, compared with the trusted one")
    v = with_ledger("verify-receipt", help="check a gateway receipt for a frame as a device does")
    v.add_argument("receipt", metavar="FILE", help="the receipt (CBOR or hex)")
    v.add_argument("--frame", required=True, metavar="FILE", help="the frame the device sent (CBOR or hex)")
    k = sub.add_parser("keygen", help="make a private key file (on a device or for an admin); prints the public key")
    k.add_argument("--out", required=True, metavar="FILE", help="the private key file to write (mode 0600)")
    q = sub.add_parser("request", help="on a device: write a signed registration request for its key")
    q.add_argument("--key", required=True, metavar="FILE", help="the device's private key file")
    q.add_argument("--out", required=True, metavar="FILE", help="the request file to write (CBOR)")
    attributes(q)
    q.set_defaults(role="sensor")
    admin_trace.add_parser(with_ledger)
    admin_release.add_parser(with_ledger)
    admin_release.add_versions_parser(with_ledger)
    admin_validators.add_parser(with_ledger)
    return p


COMMANDS: dict[str, Callable[[Context, argparse.Namespace], int]] = {
    "register": cmd_register,
    "pending": cmd_pending,
    "ban": cmd_ban,
    "unban": lambda ctx, args: cmd_ban(ctx, args, unban=True),
    "broker-login": cmd_broker_login,
    "rotate-key": cmd_rotate_key,
    "show": cmd_show,
    "firmware": cmd_firmware,
    "headers": cmd_headers,
    "validators": cmd_validators,
    "verify-receipt": cmd_verify_receipt,
    "trace": admin_trace.cmd_trace,
    "release": admin_release.cmd_release,
    "versions": admin_release.cmd_versions,
    "set-dkg": admin_validators.cmd_set_dkg,
    "approve-set": admin_validators.cmd_approve_set,
    "set-change": admin_validators.cmd_set_change,
    "follow-set": admin_validators.cmd_follow_set,
}
LOCAL = {"keygen": cmd_keygen, "request": cmd_request}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    ctx = None
    try:
        if args.command in LOCAL:
            return LOCAL[args.command](args)
        ctx = Context(args)
        return COMMANDS[args.command](ctx, args)
    except AdminError as exc:
        print("ledgerlink admin: error: %s" % exc, file=sys.stderr)
        return exc.status
    finally:
        if ctx is not None:
            ctx.close()


if __name__ == "__main__":
    sys.exit(main())
