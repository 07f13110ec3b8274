"""The device side of anonymous sessions (docs/protocol.md, "Anonymous sessions"): the dynamic-certificate
counter, the ECIES-protected request and the check of the fog's answer.

``AnonCounter`` keeps k in a file that is written before a certificate is used, so a reset never reuses
one: a reused id_k would link two sessions (the fog and the ledger see the same id) and be refused as
spent. A counter file that is missing, damaged or of another device secret means the counter is lost,
and the device refuses to make requests until it is provisioned again (a new device secret, whose
batch the owner records): it cannot learn which of its ids are spent without asking the ledger about
them, which would link them to the asker, and jumping ahead would only skip into a finite batch.

Portable: runs on CPython and MicroPython. The file is written as ``path.tmp`` and renamed over ``path``
(removed first where rename does not replace), and a whole ``.tmp`` copy counts when reading, so a
power loss at any step leaves a counter at or above every k handed out.
"""

import hashlib
import os

from ledgerlink.core import ecies, schnorr_zk
from ledgerlink.core.backend import get_backend
from ledgerlink.core.errors import LedgerlinkError
from ledgerlink.protocol import anon_wire as aw

COUNTER_FILE_LEN = 12


class AnonError(LedgerlinkError):
    """The device may not make an anonymous request (counter lost, batch used up)."""


class AnonRefused(LedgerlinkError):
    """The fog or the ledger refused the request; ``code`` is the reason code."""

    def __init__(self, code):
        super().__init__("anonymous request refused with reason %d" % code)
        self.code = code


class AnonSession:
    """A granted anonymous session: AES-CCM ``key``, ``base_iv``, ``session_id``, ``valid_until_s``, and
    ``spend_tx`` (the ledger transaction that spent the certificate). It lives in RAM only: a reset opens
    a new session, so its sequence numbers, and the nonces made from them, never repeat under its key."""

    def __init__(self, key, base_iv, session_id, valid_until_s, spend_tx):
        self.key = key
        self.base_iv = base_iv
        self.session_id = session_id
        self.valid_until_s = valid_until_s
        self.spend_tx = spend_tx
        self.seq = 0

    def __repr__(self):
        return "AnonSession(%s)" % self.session_id.hex()

    def seal(self, site, payload, backend=None):
        """(topic, anon-data frame) of ``payload`` for the cloud: COSE_Encrypt0 under the session key, kid =
        session id, Partial IV = the next sequence number (4 bytes), external_aad = the topic."""
        from ledgerlink.core import cose

        if self.seq >= 0xFFFFFFFF:
            raise AnonError("the session's sequence numbers are used up: open a new session")
        self.seq += 1
        topic = aw.data_topic(site, self.session_id)
        return topic, cose.encrypt0(payload, self.key, self.seq.to_bytes(4, "big"), self.base_iv, kid=self.session_id,
                                    external_aad=topic.encode(), backend=backend)


def _batch_tag(secret):
    return hashlib.sha256(aw.COUNTER_DOMAIN + bytes(secret)).digest()[:4]


def encode_counter(k, secret):
    """anon-counter-file = uint32 k || tag (4) || SHA-256(k || tag)[0:4], tag = SHA-256(COUNTER_DOMAIN || s)[0:4]."""
    body = k.to_bytes(4, "big") + _batch_tag(secret)
    return body + hashlib.sha256(body).digest()[:4]


def decode_counter(data, secret):
    """k of a counter file of ``secret``; None when it is damaged or belongs to another secret."""
    if not isinstance(data, (bytes, bytearray)) or len(data) != COUNTER_FILE_LEN:
        return None
    body = bytes(data[:8])
    if hashlib.sha256(body).digest()[:4] != bytes(data[8:]) or body[4:] != _batch_tag(secret):
        return None
    return int.from_bytes(body[:4], "big")


class AnonCounter:
    """The counter k of the device secret's certificates, in the file ``path``; fails closed."""

    def __init__(self, path, secret):
        self.path = path
        self.secret = secret

    def provision(self):
        """Start at k = 0: called once when the owner records the batch of this secret."""
        self._write(0)

    def _read(self, path):
        try:
            with open(path, "rb") as f:
                return decode_counter(f.read(), self.secret)
        except OSError:
            return None

    def last(self):
        """The last k used (the higher of the file and a whole copy left by an interrupted write); AnonError
        when neither holds a valid counter of this secret."""
        found = [k for k in (self._read(self.path), self._read(self.path + ".tmp")) if k is not None]
        if not found:
            raise AnonError("the certificate counter is lost: provision the device again")
        return max(found)

    def take(self):
        """The next k, stored before it is returned."""
        k = self.last() + 1
        self._write(k)
        return k

    def _write(self, k):
        tmp = self.path + ".tmp"
        with open(tmp, "wb") as f:
            f.write(encode_counter(k, self.secret))
        try:
            os.rename(tmp, self.path)
        except OSError:                 # a filesystem whose rename does not replace (FAT): the copy stays valid
            os.remove(self.path)
            os.rename(tmp, self.path)


class AnonRequest:
    """A request made: its wire ``topic`` and ``payload``, the ``reply_topic`` to read, and what checks the answer."""

    def __init__(self, topic, payload, reply_topic, response_keys, anon_id, k):
        self.topic = topic
        self.payload = payload
        self.reply_topic = reply_topic
        self.response_keys = response_keys
        self.anon_id = anon_id
        self.k = k


class PreparedRequest:
    """Everything of a request but its time and reply tag, made ahead (all its elliptic-curve work):
    C1, the request and response keys, id_k, the proof and the escrow. Used once."""

    def __init__(self, c1, request_keys, response_keys, anon_id, proof, escrow, k):
        self.c1 = c1
        self.request_keys = request_keys
        self.response_keys = response_keys
        self.anon_id = anon_id
        self.proof = proof
        self.escrow = escrow
        self.k = k


def prepare_request(device_id, identity_priv, secret, k, fog_public, cloud_public, rng, backend=None):
    """The prepared request of certificate ``k``: ECIES to the fog (C1 = e*G), the Schnorr proof of x_k bound
    to C1, and the escrow (device id and its signature over C1 and id_k) sealed to the cloud under the same e.
    Nothing in it depends on the time, so a device makes it while idle."""
    crypto = get_backend(backend)
    e, c1 = ecies.ephemeral(rng)
    z_fog = ecies.shared(e, fog_public, crypto)
    z_cloud = ecies.shared(e, cloud_public, crypto)
    e = None
    id_k = aw.anon_id(secret, k)
    proof = schnorr_zk.prove(aw.anon_secret(secret, k), id_k, aw.proof_context(c1), rng)
    signature = crypto.sign(identity_priv, aw.escrow_message(c1, id_k))
    escrow = ecies.seal(ecies.derive(z_cloud, c1, aw.ESCROW_INFO, crypto),
                        aw.encode_escrow_plain(device_id, signature), c1, crypto)
    return PreparedRequest(c1, ecies.derive(z_fog, c1, aw.REQUEST_INFO, crypto),
                           ecies.derive(z_fog, c1, aw.RESPONSE_INFO, crypto), id_k, proof, escrow, k)


def seal_request(site, prepared, time_ms, rng, backend=None):
    """The anon-request of ``prepared`` at ``time_ms``, with a fresh reply tag (AES-CCM only)."""
    reply_tag = rng(aw.REPLY_TAG_LEN)
    topic = aw.request_topic(site)
    body = aw.encode_request_body(prepared.anon_id, prepared.proof, time_ms, reply_tag, prepared.escrow)
    c2, c3 = ecies.seal(prepared.request_keys, body, topic.encode(), backend)
    return AnonRequest(topic, aw.encode_request(prepared.c1, c2, c3), aw.reply_topic(site, reply_tag),
                       prepared.response_keys, prepared.anon_id, prepared.k)


def build_request(site, device_id, identity_priv, secret, k, fog_public, cloud_public, time_ms, rng, backend=None):
    """``prepare_request`` then ``seal_request``: the anon-request of certificate ``k`` at ``time_ms``."""
    prepared = prepare_request(device_id, identity_priv, secret, k, fog_public, cloud_public, rng, backend)
    return seal_request(site, prepared, time_ms, rng, backend)


def check_response(request, payload, backend=None):
    """The AnonSession the fog granted to ``request``; AnonRefused with the reason code, or
    InvalidTag/DecodeError/InvalidMessage for an answer that is not the fog's to this request."""
    c2, c3 = aw.decode_response(payload)
    body = ecies.open_sealed(request.response_keys, c2, c3, request.reply_topic.encode(), backend)
    result, granted = aw.decode_response_body(body)
    if result != aw.RESULT_OK:
        raise AnonRefused(result)
    return AnonSession(*granted)


class AnonDevice:
    """A device's anonymous mode: ``request(time_ms)`` takes the next certificate, ``check_response`` reads
    the answer. ``batch_last`` is the last k its owner recorded; past it the device must be provisioned."""

    def __init__(self, site, device_id, identity_priv, secret, counter, batch_last, fog_public, cloud_public,
                 rng, backend=None):
        if not isinstance(secret, bytes) or len(secret) != aw.SECRET_LEN:
            raise AnonError("the device secret must be 32 bytes")
        self.site = site
        self.device_id = device_id
        self._identity = identity_priv
        self._secret = secret
        self.counter = counter
        self.batch_last = batch_last
        self.fog_public = fog_public
        self.cloud_public = cloud_public
        self.rng = rng
        self.backend = backend
        self.pending = None
        self.prepared = None

    def prepare(self):
        """Take the next certificate and do a request's elliptic-curve work ahead (while idle); AnonError when
        the counter is lost or the batch is used up. A reset before it is used skips that certificate."""
        if self.counter.last() >= self.batch_last:
            raise AnonError("every certificate of the batch is used: provision the device again")
        k = self.counter.take()
        self.prepared = prepare_request(self.device_id, self._identity, self._secret, k, self.fog_public,
                                        self.cloud_public, self.rng, self.backend)

    def request(self, time_ms):
        """A new anon-request from the prepared one (prepared now if there is none); a newer request
        replaces a pending one. AnonError as ``prepare``."""
        if self.prepared is None:
            self.prepare()
        prepared, self.prepared = self.prepared, None
        self.pending = seal_request(self.site, prepared, time_ms, self.rng, self.backend)
        return self.pending

    def check_response(self, payload):
        """The granted AnonSession (the pending request is then done); raises as ``check_response``."""
        if self.pending is None:
            raise AnonError("no anonymous request is pending")
        session = check_response(self.pending, payload, self.backend)
        self.pending = None
        return session

