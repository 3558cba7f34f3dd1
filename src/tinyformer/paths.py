"""Where generated files (checkpoints, exports, server logs) go. Never committed."""

from __future__ import annotations

import os
from pathlib import Path

_REPO = Path(__file__).resolve().parents[2]


def artifacts_dir() -> Path:
    """$TINYFORMER_ARTIFACTS, else <repo>/artifacts for a source checkout, else ~/.cache/tinyformer."""
    if os.environ.get("TINYFORMER_ARTIFACTS"):
        path = Path(os.environ["TINYFORMER_ARTIFACTS"])
    elif (_REPO / "pyproject.toml").is_file():
        path = _REPO / "artifacts"
    else:
        path = Path.home() / ".cache" / "tinyformer"
    path.mkdir(parents=True, exist_ok=True)
    return path
