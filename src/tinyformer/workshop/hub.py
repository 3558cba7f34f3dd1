"""The pieces of a one-machine JupyterHub for a class that are ours (``hub/jupyterhub_config.py`` uses them):
the class's vLLM server as a service the hub starts and stops, and what every learner's environment holds.

Everything else (authentication, spawning, the proxy) is JupyterHub's own configuration, set in that file. Each
learner works in an artifacts folder of their own, seeded with the class's trained model before their server starts.
The API key is read from its 0600 file by the hub, handed to learners' servers in their environment and to
vLLM through ``--api-key-file``: it never appears on a command line, where `ps` shows it to every user.
"""

from __future__ import annotations

import os
import pwd
import shutil
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


def seed_learner_artifacts(class_artifacts: str | Path, learner_artifacts: str | Path, preset: str = "nano"):
    """Copy the class's trained checkpoint and its export into a learner's own artifacts folder, where missing.

    Each learner writes to a folder of their own (lesson 04 saves its checkpoint, later lessons their exports),
    starting from the very weights the class's server serves, so lesson 07's greedy comparison holds and nobody
    trains before the serving lessons. Copies keep their times: the export stays newer than the checkpoint, so
    lesson_export uses it as it is. Returns the paths copied."""
    source, target = Path(class_artifacts), Path(learner_artifacts)
    missing = [name for name in (f"{preset}.pt", f"{preset}-hf") if not (source / name).exists()]
    if missing:
        raise FileNotFoundError(
            f"the class's trained model is not in {source} (missing: {', '.join(missing)}). Train and export it the "
            f"day before (`tinyformer train --preset {preset}`, then `tinyformer export`), see docs/workshop.md."
        )
    target.mkdir(parents=True, exist_ok=True)
    copied = []
    for name in (f"{preset}.pt", f"{preset}-hf"):
        if not (target / name).exists():
            copy = shutil.copytree if (source / name).is_dir() else shutil.copy2
            copied.append(Path(copy(source / name, target / name)))
    return copied


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
    their TINYFORMER_ARTIFACTS at it."""

    def hook(spawner) -> None:
        home, owner = learner_home(spawner)
        folder = home / "artifacts"
        for path in seed_learner_artifacts(class_artifacts, folder, preset):
            if owner:  # the hub runs as root; the learner must be able to replace these files
                for item in [folder, path, *(path.rglob("*") if path.is_dir() else [])]:
                    os.chown(item, *owner)
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
