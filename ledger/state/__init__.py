"""The ledger state machine: registry, anchors, certificate, firmware and provenance records."""
