"""A hostile learner on the class's JupyterHub: what the hub does as root on their behalf, and what they reach.

The hub runs as root and seeds each learner's ``~/artifacts`` before their server starts; these tests play the
learner with a throw-away account of this machine (``useradd``, removed after each test) whose home is a temporary
folder, and check that nothing a learner can put in their own folder makes root write elsewhere.

Needs root (the hub's own situation, and CI's): creating accounts and handing files over takes it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest
import torch
from conftest import REPO

from tinyformer import ModelConfig, Transformer, build_tokenizer
from tinyformer.export import export_hf
from tinyformer.serving import read_metrics
from tinyformer.serving.server import GUARD_MIDDLEWARE, MULTI_USER_ENV, URL_ENV, VLLMServer
from tinyformer.workshop.hub import (
    UnsafeLearnerFolder,
    checked_hub_url,
    class_key,
    class_server_service,
    seed_before_spawn,
    service_account,
)

MICRO_CONFIG = {"model_type": "gpt2", "vocab_size": 55, "n_positions": 128, "n_embd": 64, "n_layer": 2, "n_head": 2}


@pytest.fixture
def account(new_account):
    """A learner: an account of this machine with a home of its own (conftest's new_account)."""
    return new_account()


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


def test_artifacts_as_a_link_to_a_folder_of_roots_is_refused(account, school, roots_folder):
    link = Path(account.pw_dir) / "artifacts"
    link.symlink_to(roots_folder, target_is_directory=True)
    os.lchown(link, account.pw_uid, account.pw_gid)
    before = snapshot(roots_folder)

    refusal = seed_refusal(school, account)
    assert snapshot(roots_folder) == before  # no file gained, no owner changed
    assert "artifacts is a symbolic link or not a folder" in refusal


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


def test_a_link_planted_among_the_class_files_is_not_copied(account, school, roots_folder):
    """Whoever can write the class's folder (the instructor's account) must not make root copy root's files."""
    (school / "nano-hf" / "tokenizer.json").symlink_to(roots_folder / "passwd")
    refusal = seed_refusal(school, account)
    assert not os.path.lexists(Path(account.pw_dir) / "artifacts" / "nano-hf" / "tokenizer.json")
    assert "'tokenizer.json' (for " in refusal and "is a symbolic link" in refusal


# ----- the class's vLLM service: an account of its own ---------------------------------------------------------


def test_the_service_runs_as_its_account_which_gets_the_key_file(new_account, shared_tmp, school):
    vllm = new_account()
    key_file = shared_tmp / "class-key"
    key = class_key(key_file, vllm)
    info = key_file.stat()
    assert (info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode)) == (vllm.pw_uid, vllm.pw_gid, 0o600)
    assert class_key(key_file, vllm) == key  # the hub, root, reads it back on its next start

    model = shared_tmp / "nano-hf"
    shutil.copytree(school / "nano-hf", model)
    service = class_server_service(model, learners=3, port=8100, key_file=key_file, account=vllm)
    assert service["user"] == vllm.pw_name and service["cwd"] == vllm.pw_dir
    assert service["environment"]["TINYFORMER_ARTIFACTS"] == f"{vllm.pw_dir}/artifacts"  # its log: not the class's

    model.chmod(0o700)  # an export made before exports followed the umask
    with pytest.raises(ValueError, match=rf"'{vllm.pw_name}' cannot read the model it serves: {model} has mode 0700"):
        class_server_service(model, learners=3, port=8100, key_file=key_file, account=vllm)


def test_the_service_account_must_exist_not_be_root_and_have_a_home(new_account, shared_tmp):
    if os.geteuid() != 0:
        pytest.skip("the hub picks an account only when it runs as root")
    with pytest.raises(ValueError, match=r"does not have: create it \(`sudo useradd --system --create-home"):
        service_account("no-such-account-here")
    with pytest.raises(ValueError, match=r"must not run as 'root' \(uid 0\)"):
        service_account("root")
    homeless = new_account()
    Path(homeless.pw_dir).rmdir()
    with pytest.raises(ValueError, match=rf"home {homeless.pw_dir} is missing or not its own"):
        service_account(homeless.pw_name)
    assert service_account("") is None  # explicitly the hub's own user


# ----- what learners reach ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url, cert, key, refused",
    [
        ("http://0.0.0.0:8000", None, None, "over plain HTTP: learners' passwords"),
        ("http://10.0.0.5:8000", None, None, "over plain HTTP: learners' passwords"),
        ("http://127.0.0.1:8000", None, None, None),
        ("https://0.0.0.0:443", "/etc/ssl/hub.crt", "/etc/ssl/hub.key", None),
        ("https://0.0.0.0:443", None, None, "use https:// with a certificate and key"),
        ("http://0.0.0.0:8000", "/etc/ssl/hub.crt", "/etc/ssl/hub.key", "use https:// with a certificate and key"),
        ("https://0.0.0.0:443", "/etc/ssl/hub.crt", None, "TLS needs both"),
    ],
)
def test_the_hub_listens_beyond_loopback_only_with_tls(url, cert, key, refused):
    if refused is None:
        assert checked_hub_url(url, ssl_cert=cert, ssl_key=key) == url
    else:
        with pytest.raises(ValueError, match=re.escape(refused)):
            checked_hub_url(url, ssl_cert=cert, ssl_key=key)


def test_the_shipped_config_refuses_a_plain_http_hub_on_every_interface(tmp_path, monkeypatch):
    """hub/jupyterhub_config.py loaded as JupyterHub loads it (traitlets' loader)."""
    from traitlets.config.loader import PyFileConfigLoader

    monkeypatch.setenv("TINYFORMER_HUB_URL", "http://0.0.0.0:8000")
    monkeypatch.setenv("TINYFORMER_HUB_VLLM_USER", "")  # the service's account is not what this test is about
    monkeypatch.setenv("TINYFORMER_HUB_KEY_FILE", str(tmp_path / "class-key"))
    with pytest.raises(ValueError, match=r"http://0.0.0.0:8000 listens beyond this machine over plain HTTP"):
        PyFileConfigLoader("jupyterhub_config.py", path=str(REPO / "hub")).load_config()
    monkeypatch.setenv("TINYFORMER_HUB_URL", "http://127.0.0.1:8000")
    config = PyFileConfigLoader("jupyterhub_config.py", path=str(REPO / "hub")).load_config()
    assert config.JupyterHub.bind_url == "http://127.0.0.1:8000"


def test_servers_learners_start_on_a_hub_get_a_key_of_their_own(tmp_path, monkeypatch):
    """Every learner's kernel reaches this machine's loopback: a server a lesson starts (10-13) gets a random key,
    on every route, in vLLM's environment only. JupyterHub sets JUPYTERHUB_USER in every server it spawns."""
    (tmp_path / "config.json").write_text(json.dumps(MICRO_CONFIG))
    monkeypatch.delenv(URL_ENV, raising=False)
    monkeypatch.delenv(MULTI_USER_ENV, raising=False)
    monkeypatch.delenv("JUPYTERHUB_USER", raising=False)
    alone = VLLMServer(tmp_path, shared=False)
    assert alone.api_key is None and GUARD_MIDDLEWARE not in alone.command()  # a laptop: lesson 07's rules

    monkeypatch.setenv("JUPYTERHUB_USER", "ada")
    first, second = VLLMServer(tmp_path, shared=False), VLLMServer(tmp_path, shared=False)
    assert first.api_key and second.api_key and first.api_key != second.api_key and len(first.api_key) >= 32
    assert first.guards_every_route and GUARD_MIDDLEWARE in first.command()
    assert first._environment()["VLLM_API_KEY"] == first.api_key
    assert first.api_key not in " ".join(first.command()) and first.api_key not in repr(first)
    assert VLLMServer(tmp_path, api_key="mine", shared=False).api_key == "mine"  # a key given is kept

    monkeypatch.delenv("JUPYTERHUB_USER")
    monkeypatch.setenv(MULTI_USER_ENV, "1")  # a machine many people log in to, without a hub
    assert VLLMServer(tmp_path, shared=False).guards_every_route


@pytest.mark.vllm
@pytest.mark.slow
def test_a_learners_own_server_on_a_hub_answers_only_its_key(tmp_path, monkeypatch):
    """A real server as a lesson starts one on a hub: the lesson's helpers send its key; nobody else gets in."""
    tokenizer = build_tokenizer()
    torch.manual_seed(0)
    export_dir = export_hf(
        Transformer(ModelConfig.preset("micro", vocab_size=len(tokenizer))), tokenizer, tmp_path / "m"
    )
    monkeypatch.delenv(URL_ENV, raising=False)
    monkeypatch.setenv("JUPYTERHUB_USER", "ada")
    with VLLMServer(export_dir, kv_cache_tokens=1280, shared=False, progress=False) as server:
        for method, path in [
            ("GET", "/v1/models"),
            ("GET", "/metrics"),
            ("POST", "/tokenize"),
            ("POST", "/invocations"),
        ]:
            assert httpx.request(method, f"{server.url}{path}", json={}, timeout=10).status_code == 401, path
        assert server.reported is not None  # read from its /metrics, with its key
        reply = server.client().completions.create(model=server.model, prompt="the cat", max_tokens=4, temperature=0)
        assert reply.usage.completion_tokens == 4
        assert read_metrics(server)["vllm:generation_tokens_total"] == 4  # /metrics, with its key
        assert server.api_key not in server.log_text()
