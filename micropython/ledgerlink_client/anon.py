"""Anonymous sessions on a board (docs/protocol.md, "Anonymous sessions"): ``AnonClient`` opens a session
with the fog through the site's broker and sends readings under it.

Each ``open`` connects anew with the broker login every anonymous device of the site shares and a fresh
random client id (``anon-`` and 16 hex digits), subscribes to the answer topic its request names (the
request's reply tag, known only to this session and the fog), publishes the request and waits for the
fog's answer (``anon_device.check_response``: a refusal raises ``AnonRefused`` with the fog's reason),
publishing the same request again every ``resend_ms`` meanwhile (a request sent before the fog subscribed
is lost; a copy the fog has seen is dropped by it as a replay, so the answer comes once).
``send`` seals a reading under the session (``AnonSession.seal``) and publishes it QoS 1 on the session's
data topic. Nothing the board sends names it: no device id in the client id, the login or a topic.

A device imports this module only when it uses the anonymous mode, so the signed and session modes keep
their heap (``ledgerlink_client.device`` never imports it).
"""

from ledgerlink_client import mqtt

CLIENT_ID_PREFIX = "anon-"          # as ledgerlink.tools.broker_access.ANON_CLIENT_ID_PREFIX
CLIENT_ID_RANDOM = 8                # bytes: 16 hex digits
STEP_MS = 100
RESEND_MS = 5000                    # the same request published again while no answer came


class AnonClient:
    """``device``: an ``anon_device.AnonDevice``; ``open_stream()``: a new byte stream to the broker
    (``transport.open_socket``); ``login``: {"username", "password"} of the shared anonymous account;
    ``rng(n)``: n random bytes."""

    def __init__(self, device, open_stream, login, rng, keepalive=60):
        self.device = device
        self.open_stream = open_stream
        self.login = login
        self.rng = rng
        self.keepalive = keepalive
        self.client = None
        self.session = None

    def open(self, time_ms, timeout_ms=20000, resend_ms=RESEND_MS):
        """Open a session (the previous one closed); return its ``AnonSession``. AnonRefused when the fog
        refuses, MQTTError/OSError when the broker does, OSError when no answer comes in ``timeout_ms``."""
        self.close()
        client_id = CLIENT_ID_PREFIX + bytes(self.rng(CLIENT_ID_RANDOM)).hex()
        self.client = mqtt.MQTTClient(self.open_stream(), client_id, self.keepalive, True,
                                      self.login["username"], self.login["password"])
        self.client.connect()
        request = self.device.request(time_ms)
        sub = self.client.subscribe(request.reply_topic, 1)
        if self._wait(lambda e: e[0] == "suback" and e[1] == sub, timeout_ms) is None:
            raise OSError("no SUBACK for the answer topic within %d ms" % timeout_ms)
        answer = None
        waited = 0
        while answer is None:
            if waited >= timeout_ms:
                raise OSError("no answer from the fog within %d ms" % timeout_ms)
            self.client.publish(request.topic, request.payload, 1)
            answer = self._wait(lambda e: e[0] == "msg" and e[1] == request.reply_topic,
                                min(resend_ms, timeout_ms - waited))
            waited += resend_ms
        self.session = self.device.check_response(answer[2])
        return self.session

    def send(self, payload, timeout_ms=10000):
        """Publish ``payload`` sealed under the open session and wait for the broker's PUBACK; the topic."""
        if self.session is None:
            raise OSError("no anonymous session open")
        topic, frame = self.session.seal(self.device.site, payload)
        pid = self.client.publish(topic, frame, 1)
        if self._wait(lambda e: e[0] == "puback" and e[1] == pid, timeout_ms) is None:
            raise OSError("no PUBACK for the reading within %d ms" % timeout_ms)
        return topic

    def close(self):
        """End the connection; the session's key is forgotten (a new session is opened for more)."""
        if self.client is not None:
            try:
                self.client.disconnect()
            except OSError:
                pass
        self.client = None
        self.session = None

    def _wait(self, wanted, timeout_ms):
        """The first event ``wanted`` accepts within about ``timeout_ms``, or None."""
        waited = 0
        while waited < timeout_ms:
            for event in self.client.poll(STEP_MS):
                if wanted(event):
                    return event
            waited += STEP_MS
        return None
