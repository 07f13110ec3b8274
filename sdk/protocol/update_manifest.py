"""Update manifests (docs/protocol.md, "Updates"): what a device may install, signed by a maintenance key.

A manifest is a deterministic CBOR map (component, payload digest and size, sequence number, device
class, dependencies, chunk size) carried as the payload of a COSE_Sign1 (ES256) whose kid is the
maintenance device's id, signed with the external AAD ``UPDATE_DOMAIN``. Its digest, SHA-256 of the
manifest bytes, is the id of its ledger record. The shape follows SUIT (RFC 9019, RFC 9124); where it is
smaller, docs/protocol.md says so.

Protects against: manifests that decode in more than one way (only deterministic CBOR, exactly the
defined keys, each in range); a Sign1 by the maintenance key made for something else (the domain AAD);
oversized input (``MANIFEST_MAX``). Signer trust, ledger records and payload checks are in ``update_check``.
"""

import hashlib

from ledgerlink.core import cbor, cose
from ledgerlink.core.errors import InvalidMessage, LedgerlinkError
from ledgerlink.protocol.codes import (DEVICE_ID_LEN, IMAGE_APP_LIBRARY, IMAGE_CONFIGURATION,
                                       IMAGE_FIRMWARE)

MANIFEST_FORMAT = 1
UPDATE_DOMAIN = b"ledgerlink-update-v1"     # external AAD of the manifest's COSE_Sign1
COMPONENTS = (IMAGE_FIRMWARE, IMAGE_CONFIGURATION, IMAGE_APP_LIBRARY)
COMPONENT_NAMES = {IMAGE_FIRMWARE: "firmware", IMAGE_CONFIGURATION: "config", IMAGE_APP_LIBRARY: "app-library"}
MANIFEST_MAX = 1024             # bytes of the manifest map
PAYLOAD_SIZE_MAX = 1 << 24      # 16 MiB: an ESP32 OTA partition is at most a few MiB
CHUNK_SIZE_MIN = 64
CHUNK_SIZE_MAX = 4096
SEQUENCE_MAX = 0xFFFFFFFF
CLASS_LEN_MAX = 64              # as the ledger's device-class text
VERSION_LEN_MAX = 64
DEPENDENCIES_MAX = 8
DIGEST_LEN = 32

# manifest map keys
_FORMAT = 1
_SEQUENCE = 2
_COMPONENT = 3
_CLASS = 4
_DIGEST = 5
_SIZE = 6
_CHUNK = 7
_DEPENDENCIES = 8
_VERSION = 9
_REQUIRED = (_FORMAT, _SEQUENCE, _COMPONENT, _CLASS, _DIGEST, _SIZE, _CHUNK)
_KEYS = _REQUIRED + (_DEPENDENCIES, _VERSION)


def _uint(value, lo, hi, what):
    if not cbor.is_uint(value) or not lo <= value <= hi:
        raise InvalidMessage("%s must be an integer in %d..%d" % (what, lo, hi))
    return value


def _text(value, hi, what):
    if not isinstance(value, str) or not 1 <= len(value) <= hi:
        raise InvalidMessage("%s must be text of 1..%d characters" % (what, hi))
    return value


def _digest(value, what):
    if not isinstance(value, bytes) or len(value) != DIGEST_LEN:
        raise InvalidMessage("%s must be a %d-byte SHA-256 digest" % (what, DIGEST_LEN))
    return value


class Manifest:
    """A checked manifest. ``version`` is the release's name for people (or None); the device compares
    ``sequence`` only."""

    def __init__(self, sequence, component, device_class, digest, size, chunk_size, dependencies=(),
                 version=None):
        self.sequence = _uint(sequence, 1, SEQUENCE_MAX, "sequence")
        if component not in COMPONENTS:
            raise InvalidMessage("component must be one of %r" % (COMPONENTS,))
        self.component = component
        self.device_class = _text(device_class, CLASS_LEN_MAX, "device class")
        self.digest = _digest(digest, "payload digest")
        self.size = _uint(size, 1, PAYLOAD_SIZE_MAX, "payload size")
        self.chunk_size = _uint(chunk_size, CHUNK_SIZE_MIN, CHUNK_SIZE_MAX, "chunk size")
        if not isinstance(dependencies, (list, tuple)) or len(dependencies) > DEPENDENCIES_MAX:
            raise InvalidMessage("dependencies must be a list of at most %d digests" % DEPENDENCIES_MAX)
        self.dependencies = tuple(_digest(d, "dependency") for d in dependencies)
        if len(set(self.dependencies)) != len(self.dependencies):
            raise InvalidMessage("a dependency is listed twice")
        self.version = None if version is None else _text(version, VERSION_LEN_MAX, "version")

    @property
    def chunks(self):
        """Number of chunks of the payload."""
        return (self.size + self.chunk_size - 1) // self.chunk_size

    def to_obj(self):
        m = {_FORMAT: MANIFEST_FORMAT, _SEQUENCE: self.sequence, _COMPONENT: self.component,
             _CLASS: self.device_class, _DIGEST: self.digest, _SIZE: self.size, _CHUNK: self.chunk_size}
        if self.dependencies:
            m[_DEPENDENCIES] = list(self.dependencies)
        if self.version is not None:
            m[_VERSION] = self.version
        return m

    def encode(self):
        """The manifest bytes (deterministic CBOR)."""
        data = cbor.dumps(self.to_obj())
        if len(data) > MANIFEST_MAX:
            raise InvalidMessage("manifest of %d bytes exceeds %d" % (len(data), MANIFEST_MAX))
        return data

    def __eq__(self, other):
        return isinstance(other, Manifest) and self.to_obj() == other.to_obj()

    def __repr__(self):
        return "Manifest(%s seq %d class %r %d bytes)" % (
            COMPONENT_NAMES[self.component], self.sequence, self.device_class, self.size)


def decode(data):
    """The Manifest of manifest bytes; DecodeError or InvalidMessage for anything but a valid manifest."""
    if not isinstance(data, (bytes, bytearray)):
        raise InvalidMessage("manifest must be bytes")
    if len(data) > MANIFEST_MAX:
        raise InvalidMessage("manifest of %d bytes exceeds %d" % (len(data), MANIFEST_MAX))
    obj = cbor.loads(bytes(data), max_depth=3)
    if not isinstance(obj, dict):
        raise InvalidMessage("manifest must be a map")
    for key in obj:
        if key not in _KEYS:
            raise InvalidMessage("manifest key %r is not defined" % (key,))
    for key in _REQUIRED:
        if key not in obj:
            raise InvalidMessage("manifest lacks key %d" % key)
    if obj[_FORMAT] != MANIFEST_FORMAT or type(obj[_FORMAT]) is not int:
        raise InvalidMessage("manifest format must be %d" % MANIFEST_FORMAT)
    deps = obj.get(_DEPENDENCIES, [])
    if _DEPENDENCIES in obj and not (isinstance(deps, list) and deps):
        raise InvalidMessage("dependencies, when present, must be a non-empty list")
    return Manifest(obj[_SEQUENCE], obj[_COMPONENT], obj[_CLASS], obj[_DIGEST], obj[_SIZE], obj[_CHUNK],
                    deps, obj.get(_VERSION))


def manifest_digest(manifest_bytes):
    """SHA-256 of the manifest bytes: the id of the manifest's ledger record."""
    return hashlib.sha256(bytes(manifest_bytes)).digest()


def sign(manifest, maintenance_priv, maintenance_id, backend=None):
    """The signed manifest (COSE_Sign1 bytes) of ``manifest`` by the maintenance key ``maintenance_id``."""
    if not isinstance(maintenance_id, (bytes, bytearray)) or len(maintenance_id) != DEVICE_ID_LEN:
        raise InvalidMessage("maintenance id must be a %d-byte device id" % DEVICE_ID_LEN)
    return cose.sign1(manifest.encode(), maintenance_priv, kid=bytes(maintenance_id),
                      external_aad=UPDATE_DOMAIN, backend=backend)


class Signed:
    """A decoded, not yet verified signed manifest: ``sign1``, ``signer`` (kid), ``manifest``, ``digest``."""

    def __init__(self, envelope):
        self.sign1 = cose.decode_sign1(envelope)
        kid = self.sign1.kid
        if not isinstance(kid, bytes) or len(kid) != DEVICE_ID_LEN:
            raise InvalidMessage("a signed manifest's kid must be the %d-byte maintenance device id" % DEVICE_ID_LEN)
        self.signer = kid
        self.manifest = decode(self.sign1.payload)
        self.digest = manifest_digest(self.sign1.payload)

    def verify(self, public_key, backend=None):
        """True when the signature verifies with ``public_key`` under the update domain."""
        from ledgerlink.core.backend import get_backend

        try:
            return get_backend(backend).verify(public_key, self.sign1.to_be_signed(UPDATE_DOMAIN),
                                               self.sign1.signature)
        except LedgerlinkError:
            return False
