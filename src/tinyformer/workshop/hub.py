"""The pieces of a one-machine JupyterHub for a class that are ours (``hub/jupyterhub_config.py`` uses them):
the class's vLLM server as a service the hub starts and stops, and what every learner's environment holds.

Everything else (authentication, spawning, the proxy) is JupyterHub's own configuration, set in that file. Each
learner works in an artifacts folder of their own, seeded with the class's trained model before their server starts.
The hub runs as root; the vLLM service runs as an unprivileged account of its own (service_account). The API key
lives in a 0600 file owned by that account: the hub reads it and hands it to learners' servers in their environment,
vLLM reads it through ``--api-key-file``. It never appears on a command line, where `ps` shows it to every user.
"""

from __future__ import annotations

import errno
import os
import pwd
import shutil
import stat
import sys
from pathlib import Path
from urllib.parse import urlparse

from tinyformer.serving.cli import KEY_FILE_MODE, read_or_create_key
from tinyformer.serving.server import API_KEY_ENV, URL_ENV, is_loopback

SERVICE_NAME = "vllm"
# The account the class's vLLM server runs as when the hub runs as root (TINYFORMER_HUB_VLLM_USER overrides it).
SERVICE_ACCOUNT = "tinyformer-vllm"
CREATE_ACCOUNT = "sudo useradd --system --create-home --home-dir /var/lib/{name} --shell /usr/sbin/nologin {name}"
# The proxy JupyterHub starts (configurable-http-proxy), installed by `make install` from hub/package.json.
PROXY_BIN = Path("node_modules") / ".bin" / "configurable-http-proxy"


def class_server_service(
    model_dir: str | Path,
    *,
    learners: int,
    port: int,
    key_file: str | Path,
    account: pwd.struct_passwd | None = None,
    tokens_per_request: int | None = None,
    python: str = sys.executable,
) -> dict:
    """A JupyterHub managed service (``c.JupyterHub.services`` entry) running ``tinyformer workshop serve``.

    It listens on loopback only and asks for the key on every route but GET /health: every user of a hub
    reaches the machine's loopback, so vLLM's own rule (/v1 only) would leave /tokenize, /metrics and more open
    to them. No ``url``: the hub does not route it through the proxy, so it stays unreachable from outside.
    ``account`` (service_account()): the hub starts it as that account, which must be able to read the model and
    the key file (checked here, so the hub refuses to start rather than log vLLM's failures); its log goes to the
    account's home, since the class's artifacts are not its to write.
    """
    command = [python, "-m", "tinyformer.workshop", "serve", str(model_dir), "--learners", str(learners)]
    command += ["--host", "127.0.0.1", "--port", str(port), "--api-key-file", str(key_file), "--guard-every-route"]
    if tokens_per_request is not None:
        command += ["--tokens-per-request", str(tokens_per_request)]
    # A log file, not a terminal: the status line is printed when it changes, at most every 10 s.
    command += ["--status-every", "10"]
    service = {"name": SERVICE_NAME, "command": command, "environment": {"PYTHONUNBUFFERED": "1"}}
    if account is not None:
        for path, what in ((model_dir, "the model it serves"), (key_file, "the class's key file")):
            check_readable_by(account, path, what)
        home = account.pw_dir
        service.update(user=account.pw_name, cwd=home)
        service["environment"]["TINYFORMER_ARTIFACTS"] = str(Path(home) / "artifacts")  # vLLM's logs
    return service


def service_account(name: str | None = SERVICE_ACCOUNT) -> pwd.struct_passwd | None:
    """The account the class's vLLM service runs as: ``name`` when the hub runs as root, an account of this machine
    that is not root and has a home of its own (vLLM keeps its log and caches there). None (the hub's own user) when
    the hub is not root, which cannot start processes as anybody else, or when ``name`` is empty."""
    if os.geteuid() != 0 or not name:
        return None
    try:
        account = pwd.getpwnam(name)
    except KeyError:
        raise ValueError(
            f"the class's vLLM server runs as the account {name!r}, which this machine does not have: create it "
            f"(`{CREATE_ACCOUNT.format(name=name)}`), or name another unprivileged one in TINYFORMER_HUB_VLLM_USER."
        ) from None
    if account.pw_uid == 0:
        raise ValueError(
            f"the class's vLLM server must not run as {name!r} (uid 0): every learner talks to it, and root may do "
            f"anything on this machine. Create an unprivileged one: `{CREATE_ACCOUNT.format(name=SERVICE_ACCOUNT)}`."
        )
    home = Path(account.pw_dir)
    if not home.is_dir() or home.stat().st_uid != account.pw_uid:
        raise ValueError(
            f"{name}'s home {home} is missing or not its own: vLLM keeps its log and caches there. "
            f"Create it: `sudo mkdir -p {home} && sudo chown {name}: {home}`."
        )
    return account


def class_key(key_file: str | Path, account: pwd.struct_passwd | None) -> str:
    """The class's API key, from ``key_file`` (made, mode 0600, if missing). With an ``account``, the file is handed
    to it (owner, mode 0600) so that vLLM's service reads it; root, the hub, reads it anyway: readable by exactly
    the service account. Changed on the opened descriptor, never following a link."""
    key = read_or_create_key(Path(key_file))[0]
    if account is not None:
        try:
            descriptor = os.open(key_file, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as error:
            if error.errno != errno.ELOOP:
                raise
            raise ValueError(
                f"the key file {key_file} is a symbolic link: the hub hands only a file of its own folder to the "
                "service's account. Put the key file itself there."
            ) from None
        try:
            os.fchown(descriptor, account.pw_uid, account.pw_gid)
            os.fchmod(descriptor, KEY_FILE_MODE)
        finally:
            os.close(descriptor)
    return key


def check_readable_by(account: pwd.struct_passwd, path: str | Path, what: str) -> None:
    """Raise ValueError, saying what to change, when ``account`` cannot reach and read ``path`` (a file, or a
    folder and the files in it), judged by owner, group and mode bits."""
    path = Path(path).resolve()
    groups = set(os.getgrouplist(account.pw_name, account.pw_gid))
    items = [*reversed(path.parents), path, *(sorted(path.iterdir()) if path.is_dir() else [])]
    for item in items:
        info = item.stat()
        on_the_way = item in path.parents
        need = 0o1 if on_the_way else 0o5 if stat.S_ISDIR(info.st_mode) else 0o4  # enter; enter and list; read
        shift = 6 if info.st_uid == account.pw_uid else 3 if info.st_gid in groups else 0
        if (info.st_mode >> shift) & need != need:
            fix = (
                f"Let it enter that folder (`chmod a+x {item}`)"
                if on_the_way
                else f"Make it readable (`chmod -R a+rX {path}`; exports made before tinyformer followed the umask "
                "are owner-only)"
            )
            raise ValueError(
                f"the vLLM service's account {account.pw_name!r} cannot read {what}: {item} has mode "
                f"{stat.S_IMODE(info.st_mode):04o}, owner uid {info.st_uid}. {fix}, or move it."
            )


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


def checked_hub_url(url: str, *, ssl_cert: str | None, ssl_key: str | None) -> str:
    """``url`` for ``c.JupyterHub.bind_url``, refused when it would send learners' passwords over the network in
    the clear: an address beyond loopback needs TLS (both ``ssl_cert`` and ``ssl_key``, and https)."""
    parsed = urlparse(url)
    tls = bool(ssl_cert and ssl_key)
    if bool(ssl_cert) != bool(ssl_key):
        raise ValueError(
            "TLS needs both TINYFORMER_HUB_SSL_CERT and TINYFORMER_HUB_SSL_KEY (the certificate and its key)."
        )
    if tls != (parsed.scheme == "https"):
        raise ValueError(
            f"TINYFORMER_HUB_URL={url}: use https:// with a certificate and key (TINYFORMER_HUB_SSL_CERT, "
            "TINYFORMER_HUB_SSL_KEY), http:// without."
        )
    if not tls and not is_loopback(parsed.hostname or ""):
        raise ValueError(
            f"TINYFORMER_HUB_URL={url} listens beyond this machine over plain HTTP: learners' passwords and notebooks "
            "would cross the network in the clear. Give the hub TLS (https://, TINYFORMER_HUB_SSL_CERT and "
            "TINYFORMER_HUB_SSL_KEY), or keep it on 127.0.0.1 behind a reverse proxy that does TLS (docs/workshop.md)."
        )
    return url


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
