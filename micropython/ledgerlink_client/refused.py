"""What the board client does with a refusal of one of its frames (``DeviceClient`` loads this module for each
``Refused`` result and forgets it after, so the heap holds none of it while frames are taken).

A ``replay`` refusal of a frame sealed under the current session has dropped the session (the protocol
did): its stored record goes too. A refused frame whose number may repeat (the counter restarted), or
that a gateway refused because it no longer knows its session, is sealed again, with a new number,
under the next session (while its plaintext is among the last ``max_tracked`` kept). Tested in
tests/micropython/test_client_units.py and tests/micropython/test_counter_faults_in_vm.py.
"""

from ledgerlink.protocol import codes, device_protocol as dp

from ledgerlink_client.device import SESSION_FILE

# Refusal codes that say the gateway no longer knows the session a frame was sealed under.
SESSION_GONE = (codes.REASON_UNKNOWN_SESSION, codes.REASON_EXPIRED_SESSION)


def taken(client, result):
    """Count the refusal ``result`` (a ``device_protocol.Refused``) and act on it."""
    client.stats["refused"] += 1
    if result.seq is None and result.frame_hash == client._registration:
        client.stats["registrations_refused"] += 1
    elif result.seq is None:
        client.stats["sessions_refused"] += 1
    elif result.code == dp.REFUSAL_REPLAY:
        if result.session_dropped:          # a replay under the session: its numbers may repeat
            client.storage.remove(SESSION_FILE)
        sealed = client._plain.pop(result.seq, None) if client.seq.lost else None
        if sealed is not None:              # the sequence restarted: another frame has this seq
            client._plain_order.remove(result.seq)
            client.held.push("h", sealed[1])
            client.stats["resealed"] += 1
    elif result.code in SESSION_GONE and client.ecqv:
        sealed = client._plain.pop(result.seq, None)
        current = client.protocol.session
        if current is not None and (sealed is None or sealed[0] == current.keys.session_id):
            client.protocol.drop_session()
            client.storage.remove(SESSION_FILE)
        if sealed is not None:               # sealed again, with a new seq, under the next session
            client._plain_order.remove(result.seq)
            client.held.push("h", sealed[1])
            client.stats["resealed"] += 1
