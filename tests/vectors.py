"""Access to the external test vectors in ../shared/vectors, read in place (never copied).

They are present in CI (the repository is cloned with shared/ beside it). Only where that folder
is absent, as in a standalone checkout, do the vector tests skip, and they say why.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

_DEFAULT = Path(__file__).resolve().parents[1].parent / "shared" / "vectors"
VECTORS_DIR = Path(os.environ.get("SELLERBAK_VECTORS", _DEFAULT))


def load_vectors(name: str) -> dict[str, Any]:
    path = VECTORS_DIR / name
    if not VECTORS_DIR.is_dir():
        if os.environ.get("CI"):
            pytest.fail(f"external vectors folder {VECTORS_DIR} is missing in CI")
        pytest.skip(f"external vectors folder {VECTORS_DIR} is absent (standalone checkout)")
    return json.loads(path.read_text())
