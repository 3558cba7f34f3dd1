"""The pieces of a one-machine JupyterHub for a class that are ours (``hub/jupyterhub_config.py`` uses them):
the class's vLLM server as a service the hub starts and stops, and what every learner's environment holds.

Everything else (authentication, spawning, the proxy) is JupyterHub's own configuration, set in that file. Each
learner works in an artifacts folder of their own, seeded with the class's trained model before their server starts.
The API key is read from its 0600 file by the hub, handed to learners' servers in their environment and to
vLLM through ``--api-key-file``: it never appears on a command line, where `ps` shows it to every user.
"""

from __future__ import annotations

import errno
import os
import pwd
import shutil
import stat
import sys
from pathlib import Path

from tinyformer.serving.server import API_KEY_ENV, URL_ENV

SERVICE_NAME = "vllm"
# The proxy JupyterHub starts (configurable-http-proxy), installed by `make install` from hub/package.json.
PROXY_BIN = Path("node_modules") / ".bin" / "configurable-http-proxy"


def class_server_service(
    model_dir: str | Path,
    *,
    learners: int,
    port: int,
    key_file: str | Path,
    tokens_per_request: int | None = None,
    python: str = sys.executable,
) -> dict:
    """A JupyterHub managed service (``c.JupyterHub.services`` entry) running ``tinyformer workshop serve``.

    It listens on loopback only and asks for the key on every route but GET /health: every user of a hub
    reaches the machine's loopback, so vLLM's own rule (/v1 only) would leave /tokenize, /metrics and more open
    to them. No ``url``: the hub does not route it through the proxy, so it stays unreachable from outside.
    """
    command = [python, "-m", "tinyformer.workshop", "serve", str(model_dir), "--learners", str(learners)]
    command += ["--host", "127.0.0.1", "--port", str(port), "--api-key-file", str(key_file), "--guard-every-route"]
    if tokens_per_request is not None:
        command += ["--tokens-per-request", str(tokens_per_request)]
    # A log file, not a terminal: the status line is printed when it changes, at most every 10 s.
    command += ["--status-every", "10"]
    return {"name": SERVICE_NAME, "command": command, "environment": {"PYTHONUNBUFFERED": "1"}}


def learner_environment(*, vllm_port: int, api_key: str) -> dict[str, str]:
    """``c.Spawner.environment``: what every learner's Jupyter server (and so every kernel) starts with. The two
    variables make the serving lessons connect to the class's server (tinyformer.serving.VLLMServer)."""
    if not api_key or any(c.isspace() for c in api_key):
        raise ValueError("the class's API key must be one non-empty word; delete the key file to get a new one.")
    return {URL_ENV: f"http://127.0.0.1:{vllm_port}", API_KEY_ENV: api_key}


def seed_learner_artifacts(
    class_artifacts: str | Path,
    learner_artifacts: str | Path,
    preset: str = "nano",
    owner: tuple[int, int] | None = None,
) -> list[Path]:
    """Copy the class's trained checkpoint and its export into a learner's own artifacts folder, where missing.

    Each learner writes to a folder of their own (lesson 04 saves its checkpoint, later lessons their exports),
    starting from the very weights the class's server serves, so lesson 07's greedy comparison holds and nobody
    trains before the serving lessons. Copies keep their times: the export stays newer than the checkpoint, so
    lesson_export uses it as it is. A name that exists in any form (a file, a folder, even a dangling symbolic
    link) is the learner's and is kept. Returns the paths copied.

    ``owner``: the learner's (uid, gid) when the hub runs as root. The folder is then the learner's to rearrange
    while root writes into it (``~/artifacts`` a symbolic link to a folder of root's, ``nano.pt`` a dangling link
    to ``/etc/ld.so.preload``), so nothing there is reached by path: every folder is opened without following a
    link (``O_NOFOLLOW``) and checked on its descriptor (a folder, the learner's own), every file is created new
    (``O_CREAT | O_EXCL | O_NOFOLLOW``: an existing name, a link included, is never opened), and ownership is handed
    over with ``fchown`` on those descriptors. The class's files are read the same way, so a link planted among
    them cannot make root copy a file of its own into a learner's home."""
    source, target = Path(class_artifacts), Path(learner_artifacts)
    names = [f"{preset}.pt", f"{preset}-hf"]
    missing = [name for name in names if not (source / name).exists()]
    if missing:
        raise FileNotFoundError(
            f"the class's trained model is not in {source} (missing: {', '.join(missing)}). Train and export it the "
            f"day before (`tinyformer train --preset {preset}`, then `tinyformer export`), see docs/workshop.md."
        )
    if owner is None:  # the learner is the hub's own user: nothing to hand over, the folders may be made as usual
        target.parent.mkdir(parents=True, exist_ok=True)
    source_fd = os.open(source, _DIRECTORY_FLAGS)  # the hub's own setting: the one path opened as it is
    try:
        target_fd = _open_learner_folder(target, owner)
        try:
            return [target / name for name in names if _copy_new(source_fd, target_fd, name, owner, target / name)]
        finally:
            os.close(target_fd)
    finally:
        os.close(source_fd)


class UnsafeLearnerFolder(PermissionError):
    """A learner's folder holds a symbolic link, or a folder of somebody else's, where the hub was to write."""


# A folder, never through a symbolic link (a link gives ELOOP or ENOTDIR).
_DIRECTORY_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# A new file: fails on any existing name, a dangling link included (O_EXCL never follows one).
_NEW_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def _open_learner_folder(folder: Path, owner: tuple[int, int] | None) -> int:
    """A descriptor of ``folder``, made if missing, inside its parent (the learner's home, a path from pwd that
    the learner cannot change, since it sits in a folder of root's)."""
    parent_fd = os.open(folder.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        return _open_folder(parent_fd, folder.name, owner, folder, created=_make_folder(parent_fd, folder.name))
    finally:
        os.close(parent_fd)


def _make_folder(parent_fd: int, name: str) -> bool:
    try:
        os.mkdir(name, 0o700, dir_fd=parent_fd)  # owner-only until it is the learner's (fchown below)
    except FileExistsError:
        return False
    return True


def _open_folder(parent_fd: int, name: str, owner: tuple[int, int] | None, path: Path, created: bool) -> int:
    """Open ``name`` as a folder without following a link; with an ``owner``, it must be theirs, or the one we just
    made (still ours: it is handed over here, on its descriptor)."""
    try:
        fd = os.open(name, _DIRECTORY_FLAGS, dir_fd=parent_fd)
    except FileNotFoundError:
        raise
    except OSError:  # ELOOP (a link) or ENOTDIR (a file, or a link to one)
        raise UnsafeLearnerFolder(
            f"{path} is a symbolic link or not a folder: the hub writes into a learner's folder only through "
            f"folders, never links. Replace it with a folder (or remove it: the hub makes a new one)."
        ) from None
    if owner is not None:
        uid = os.fstat(fd).st_uid
        if created and uid == os.geteuid():
            os.fchown(fd, *owner)
        elif uid != owner[0]:
            os.close(fd)
            raise UnsafeLearnerFolder(f"{path} belongs to uid {uid}, not to the learner (uid {owner[0]}): not written.")
    return fd


def _copy_new(source_fd: int, target_fd: int, name: str, owner: tuple[int, int] | None, path: Path) -> bool:
    """Copy the entry ``name`` (a file or a folder of files) from one folder descriptor to the other, unless the
    target has that name already. True when copied."""
    try:
        src = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, dir_fd=source_fd)
    except OSError as error:
        if error.errno != errno.ELOOP:
            raise
        raise UnsafeLearnerFolder(
            f"the class's {name!r} (for {path}) is a symbolic link: the hub copies only files and folders, so "
            "that nobody who can write the class's folder makes root copy a file of its own. Put the file there."
        ) from None
    try:
        info = os.fstat(src)
        if stat.S_ISDIR(info.st_mode):
            if not _make_folder(target_fd, name):
                return False
            folder = _open_folder(target_fd, name, owner, path, created=True)
            try:
                for child in sorted(os.listdir(src)):
                    _copy_new(src, folder, child, owner, path / child)
                os.fchmod(folder, stat.S_IMODE(info.st_mode))
            finally:
                os.close(folder)
            return True
        if not stat.S_ISREG(info.st_mode):
            raise UnsafeLearnerFolder(f"the class's {name!r} is neither a file nor a folder: not copied.")
        try:
            out = os.open(name, _NEW_FILE_FLAGS, 0o600, dir_fd=target_fd)
        except FileExistsError:
            return False
        with os.fdopen(out, "wb") as writer, os.fdopen(os.dup(src), "rb") as reader:
            if owner is not None:
                os.fchown(out, *owner)
            shutil.copyfileobj(reader, writer)
            writer.flush()
            os.fchmod(out, stat.S_IMODE(info.st_mode))
            os.utime(out, ns=(info.st_atime_ns, info.st_mtime_ns))  # the export stays newer than the checkpoint
        return True
    finally:
        os.close(src)


def learner_home(spawner) -> tuple[Path, tuple[int, int] | None]:
    """(the learner's home folder, the (uid, gid) that must own what we write there, or None when the learner's
    server runs as the hub's own user, as with SimpleLocalProcessSpawner)."""
    home = getattr(spawner, "home_dir", None)  # SimpleLocalProcessSpawner: every learner is the hub's user
    if home:
        return Path(home), None
    try:
        entry = pwd.getpwnam(spawner.user.name)  # LocalProcessSpawner: each learner is a user of this machine
    except KeyError:
        raise ValueError(
            f"learner {spawner.user.name!r} is no user of this machine: create it (`adduser`), or use an "
            "authenticator that does (docs/workshop.md, 'Who may log in')."
        ) from None
    return Path(entry.pw_dir), (entry.pw_uid, entry.pw_gid)


def seed_before_spawn(class_artifacts: str | Path, preset: str = "nano"):
    """``c.Spawner.pre_spawn_hook``: give the learner ``~/artifacts`` seeded with the class's model, and point
    their TINYFORMER_ARTIFACTS at it. The hub runs as root: what it writes there is handed to the learner without
    ever following a link the learner put in the way (seed_learner_artifacts)."""

    def hook(spawner) -> None:
        home, owner = learner_home(spawner)
        folder = home / "artifacts"
        seed_learner_artifacts(class_artifacts, folder, preset, owner=owner)
        spawner.environment = {**spawner.environment, "TINYFORMER_ARTIFACTS": str(folder)}

    return hook


def proxy_command(hub_dir: str | Path) -> list[str]:
    """``c.ConfigurableHTTPProxy.command``: the proxy `make install` put under ``hub_dir``; a clear error when it
    is missing (JupyterHub's own says only that the command was not found)."""
    binary = Path(hub_dir) / PROXY_BIN
    if not binary.is_file():
        raise FileNotFoundError(
            f"{binary} is missing: JupyterHub needs its proxy. Run `make install` (it runs `npm ci --prefix hub`; "
            "Node.js 20 or newer), or install configurable-http-proxy yourself and set c.ConfigurableHTTPProxy.command."
        )
    return [str(binary)]
