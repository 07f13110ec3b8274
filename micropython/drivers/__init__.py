"""Sensor drivers for boards (and CPython, with a bus object of the same two calls)."""
