"""A hostile learner on the class's JupyterHub: what the hub does as root on their behalf, and what they reach.

The hub runs as root and seeds each learner's ``~/artifacts`` before their server starts; these tests play the
learner with a throw-away account of this machine (``useradd``, removed after each test) whose home is a temporary
folder, and check that nothing a learner can put in their own folder makes root write elsewhere.

Needs root (the hub's own situation, and CI's): creating accounts and handing files over takes it.
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path
from types import SimpleNamespace

import pytest

from tinyformer.workshop.hub import UnsafeLearnerFolder, seed_before_spawn

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="creates accounts and hands files over: needs root")


@pytest.fixture
def account():
    """A new account of this machine with a home of its own in a fresh temporary folder; removed afterwards."""
    name = f"tf-test-{secrets.token_hex(4)}"
    base = Path(tempfile.mkdtemp(prefix="tinyformer-hub-"))
    base.chmod(0o755)  # the account must reach its home
    home = base / name
    subprocess.run(
        ["useradd", "--no-create-home", "--home-dir", str(home), "--shell", "/usr/sbin/nologin", "--user-group", name],
        check=True,
        capture_output=True,
    )
    try:
        entry = pwd.getpwnam(name)
        home.mkdir(mode=0o700)
        os.chown(home, entry.pw_uid, entry.pw_gid)
        yield entry
    finally:
        subprocess.run(["userdel", name], check=True, capture_output=True)
        shutil.rmtree(base)


@pytest.fixture
def school(tmp_path) -> Path:
    """The class's artifacts: a checkpoint and an export folder, as `tinyformer train` and `export` leave them."""
    folder = tmp_path / "class"
    (folder / "nano-hf").mkdir(parents=True)
    (folder / "nano.pt").write_bytes(b"the class's weights")
    (folder / "nano-hf" / "config.json").write_text('{"model_type": "gpt2"}')
    (folder / "nano-hf" / "model.safetensors").write_bytes(b"exported weights")
    os.utime(folder / "nano.pt", (1_000, 1_000))
    return folder


@pytest.fixture
def roots_folder(tmp_path) -> Path:
    """A folder of root's with a file in it: what a learner's links point at (standing in for /etc)."""
    folder = tmp_path / "roots"
    folder.mkdir(mode=0o755)
    (folder / "passwd").write_text("root's file\n")
    return folder


def spawner_of(account) -> SimpleNamespace:
    """What the hook reads of JupyterHub's LocalProcessSpawner: the learner's name and the environment."""
    return SimpleNamespace(user=SimpleNamespace(name=account.pw_name), environment={})


def snapshot(folder: Path) -> dict[str, tuple[int, int, int, bytes | None]]:
    """Every entry under ``folder`` (links not followed): owner, group, mode and a file's bytes."""
    entries = {}
    for path in [folder, *sorted(folder.rglob("*"))]:
        info = path.lstat()
        content = path.read_bytes() if stat.S_ISREG(info.st_mode) else None
        entries[str(path.relative_to(folder))] = (info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode), content)
    return entries


def seed_refusal(school: Path, account) -> str:
    """The hook's refusal, or "" when it seeded without one (checked after what it may have done)."""
    try:
        seed_before_spawn(school)(spawner_of(account))
    except UnsafeLearnerFolder as error:
        return str(error)
    return ""


def owned_by(account, path: Path) -> None:
    for item in [path, *path.rglob("*")]:
        info = item.lstat()
        assert (info.st_uid, info.st_gid) == (account.pw_uid, account.pw_gid), f"{item} is not the learner's"


@needs_root
def test_artifacts_as_a_link_to_a_folder_of_roots_is_refused(account, school, roots_folder):
    link = Path(account.pw_dir) / "artifacts"
    link.symlink_to(roots_folder, target_is_directory=True)
    os.lchown(link, account.pw_uid, account.pw_gid)
    before = snapshot(roots_folder)

    refusal = seed_refusal(school, account)
    assert snapshot(roots_folder) == before  # no file gained, no owner changed
    assert "artifacts is a symbolic link or not a folder" in refusal


@needs_root
def test_a_dangling_link_to_a_file_of_roots_creates_nothing_there(account, school, roots_folder):
    folder = Path(account.pw_dir) / "artifacts"
    folder.mkdir()
    os.chown(folder, account.pw_uid, account.pw_gid)
    preload = roots_folder / "ld.so.preload"  # /etc/ld.so.preload: a file root would load into every program
    (folder / "nano.pt").symlink_to(preload)
    os.lchown(folder / "nano.pt", account.pw_uid, account.pw_gid)
    before = snapshot(roots_folder)

    spawner = spawner_of(account)
    seed_before_spawn(school)(spawner)
    assert not os.path.lexists(preload) and snapshot(roots_folder) == before
    assert (folder / "nano.pt").is_symlink()  # the learner's own entry, kept as it is
    assert (folder / "nano-hf" / "config.json").read_text() == '{"model_type": "gpt2"}'  # the rest is seeded
    owned_by(account, folder / "nano-hf")
    assert spawner.environment == {"TINYFORMER_ARTIFACTS": str(folder)}


@needs_root
def test_a_new_learner_gets_the_class_files_as_their_own(account, school):
    spawner = spawner_of(account)
    seed_before_spawn(school)(spawner)

    folder = Path(account.pw_dir) / "artifacts"
    assert spawner.environment == {"TINYFORMER_ARTIFACTS": str(folder)}
    owned_by(account, folder)
    assert (folder / "nano.pt").read_bytes() == b"the class's weights"
    assert (folder / "nano-hf" / "model.safetensors").read_bytes() == b"exported weights"
    assert (folder / "nano.pt").stat().st_mtime == 1_000  # times kept: the export stays newer than the checkpoint
    assert stat.S_IMODE((folder / "nano.pt").stat().st_mode) == stat.S_IMODE((school / "nano.pt").stat().st_mode)

    (folder / "nano.pt").write_bytes(b"trained by the learner in lesson 04")
    seed_before_spawn(school)(spawner)  # the next spawn keeps what the learner made
    assert (folder / "nano.pt").read_bytes() == b"trained by the learner in lesson 04"


@needs_root
def test_a_link_planted_among_the_class_files_is_not_copied(account, school, roots_folder):
    """Whoever can write the class's folder (the instructor's account) must not make root copy root's files."""
    (school / "nano-hf" / "tokenizer.json").symlink_to(roots_folder / "passwd")
    refusal = seed_refusal(school, account)
    assert not os.path.lexists(Path(account.pw_dir) / "artifacts" / "nano-hf" / "tokenizer.json")
    assert "'tokenizer.json' (for " in refusal and "is a symbolic link" in refusal
