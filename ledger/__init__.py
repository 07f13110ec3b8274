"""Full ledger nodes: PBFT consensus, block storage, registry contracts and proofs."""
