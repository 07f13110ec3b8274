"""Gateway: checks every device message, relays to the ledger, returns receipts."""
