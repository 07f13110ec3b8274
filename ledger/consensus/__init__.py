"""PBFT consensus as a sans-I/O state machine, and a seeded simulator that drives it."""
