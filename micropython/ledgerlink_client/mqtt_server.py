"""The broker's side of the MQTT 3.1.1 codec in ``mqtt``: decoding CONNECT and SUBSCRIBE, encoding CONNACK,
SUBACK and PINGRESP (what a test broker needs, never a device). ``mqtt.parse`` and ``mqtt``'s names load it
when first used, so a board does not hold it. Tested with ``mqtt`` (tests/micropython/test_client_units.py).
"""

from ledgerlink_client.mqtt import CONNACK, CONNECT, SUBACK, SUBSCRIBE, MQTTError, Packet, _packet, _pid, _pid_bytes


def encode_connack(session_present, return_code):
    return _packet(CONNACK << 4, bytes([1 if session_present else 0, return_code]))


def encode_suback(pid, codes):
    return _packet(SUBACK << 4, _pid_bytes(pid) + bytes(codes))


def encode_pingresp():
    return b"\xd0\x00"


def decode_body(kind, flags, r, body):
    """The Packet of a CONNECT or SUBSCRIBE body read by ``r`` (``mqtt._Reader`` over ``body``)."""
    if kind == SUBSCRIBE:
        if flags != 2:
            raise MQTTError("SUBSCRIBE flags must be 2")
        pid = _pid(r)
        codes = []
        topics = []
        while r.pos < len(body):
            topics.append(r.string())
            q = r.u8()
            if q > 2:
                raise MQTTError("bad requested QoS")
            codes.append(q)
        if not topics:
            raise MQTTError("SUBSCRIBE without topics")
        return Packet(kind, flags, pid=pid, topic=topics, codes=codes)
    if kind == CONNECT:
        if r.string() != "MQTT" or r.u8() != 4:
            raise MQTTError("not an MQTT 3.1.1 CONNECT")
        cflags = r.u8()
        if cflags & 0x3D:
            raise MQTTError("CONNECT will/reserved flags are not supported")
        if cflags & 0x40 and not cflags & 0x80:
            raise MQTTError("password without user name")
        keepalive = r.u16()
        client_id = r.string()
        username = r.string() if cflags & 0x80 else None
        password = r.binary() if cflags & 0x40 else None
        r.done()
        return Packet(kind, client_id=client_id, keepalive=keepalive, clean_session=bool(cflags & 2),
                      username=username, password=password)
    raise MQTTError("unsupported packet type %d" % kind)
