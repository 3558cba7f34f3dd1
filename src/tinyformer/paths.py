"""Where generated files (checkpoints, exports, server logs) go. Never committed."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from filelock import FileLock

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


def current_umask() -> int:
    """This process's umask (it can only be read by setting it, so it is set back at once)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_file(path: str | Path) -> Iterator[Path]:
    """A temp file in ``path``'s folder (made if missing) to write; on success one rename puts it at ``path``, on
    error it is removed. A crash leaves the old file or the new one, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o644)  # mkstemp makes owner-only files; a classroom shares checkpoints and notebooks
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def one_writer(path: str | Path) -> FileLock:
    """A lock held while ``path`` is checked, and made when missing: two test workers or two kernels that want
    the same trained model at once train it once (the second waits, then loads what the first saved). The lock
    is a hidden file beside ``path`` that stays (removing it could let a third caller lock a different file)."""
    path = Path(path)
    return FileLock(path.with_name(f".{path.name}.lock"))
