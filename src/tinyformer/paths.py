"""Where generated files (checkpoints, exports, server logs) go. Never committed."""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
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
    error it is removed. A crash leaves the old file or the new one, never half of one.

    The file gets the mode a plain ``open(path, "w")`` would give it: an existing file keeps its mode (an
    instructor's 0600 notebook stays 0600), a new one gets 0666 less the umask (0644 under the usual 022, 0600
    under 077). Callers that hold secrets (course solutions) set their own mode afterwards."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _new_temp_file(path)
    try:
        yield tmp
        with contextlib.suppress(FileNotFoundError):
            os.chmod(tmp, stat.S_IMODE(path.stat().st_mode))  # a rewrite keeps the mode its owner chose
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def one_writer(path: str | Path) -> FileLock:
    """A lock held while ``path`` is checked, and made when missing: two test workers or two kernels that want
    the same trained model at once train it once (the second waits, then loads what the first saved). The lock
    is a hidden file beside ``path`` that stays (removing it could let a third caller lock a different file)."""
    path = Path(path)
    return FileLock(path.with_name(f".{path.name}.lock"))


def check_writable(path: str | Path) -> None:
    """Raise ValueError if no file can be written at ``path`` (its folder can't be made or written): called
    before the work that produces the file, so a typo in an output path costs nothing."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _new_temp_file(path).unlink()
    except OSError as error:
        where = f" ({error.filename})" if error.filename else ""
        raise ValueError(
            f"cannot write {path}: {error.strerror}{where}. Choose a path in a folder you can write."
        ) from None


def _new_temp_file(path: Path) -> Path:
    """An empty new file beside ``path``, created with mode 0666 so that the umask decides its permissions
    (``tempfile.mkstemp`` would make it 0600 whatever the umask)."""
    for _ in range(100):
        tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        except FileExistsError:
            continue
        return tmp
    raise FileExistsError(f"could not create a temp file beside {path}: 100 names were taken; clean up {path.parent}.")
