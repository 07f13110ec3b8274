"""Shared test fixtures: the location of the shared test vectors."""

import json
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[1]
VECTORS = PROJECT_ROOT.parent / "shared" / "vectors"


def load_vectors(relative: str) -> dict:
    """Load a JSON vector file from ../shared/vectors; a missing file is a test failure, not a skip."""
    path = VECTORS / relative
    if not path.is_file():
        raise FileNotFoundError(f"test vectors missing: {path} (expected ../shared/vectors beside the project)")
    return json.loads(path.read_text())


@pytest.fixture(scope="session")
def vectors_dir() -> Path:
    if not VECTORS.is_dir():
        raise FileNotFoundError(f"test vectors missing: {VECTORS}")
    return VECTORS
