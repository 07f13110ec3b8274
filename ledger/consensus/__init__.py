"""PBFT consensus as a sans-I/O state machine, and a seeded simulator that drives it."""

from ledgerlink.ledger.consensus.messages import Block, CommitCertificate, Header, MessageError
from ledgerlink.ledger.consensus.replica import (
    App, Broadcast, Committed, Config, Dropped, Effect, Persist, Replica, Send,
)

__all__ = ["App", "Block", "Broadcast", "CommitCertificate", "Committed", "Config", "Dropped",
           "Effect", "Header", "MessageError", "Persist", "Replica", "Send"]
