"""The pieces of a one-machine JupyterHub for a class that are ours (``hub/jupyterhub_config.py`` uses them):
the class's vLLM server as a service the hub starts and stops, and what every learner's environment holds.

Everything else (authentication, spawning, the proxy) is JupyterHub's own configuration, set in that file.
The API key is read from its 0600 file by the hub, handed to learners' servers in their environment and to
vLLM through ``--api-key-file``: it never appears on a command line, where `ps` shows it to every user.
"""

from __future__ import annotations

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


def learner_environment(*, vllm_port: int, api_key: str, artifacts: str | Path) -> dict[str, str]:
    """``c.Spawner.environment``: what every learner's Jupyter server (and so every kernel) starts with.

    The two variables make the serving lessons connect to the class's server (tinyformer.serving.VLLMServer);
    TINYFORMER_ARTIFACTS points at the class's trained model, so every learner's own model is the one served
    (lesson 07 checks the server's greedy tokens against it)."""
    if not api_key or any(c.isspace() for c in api_key):
        raise ValueError("the class's API key must be one non-empty word; delete the key file to get a new one.")
    return {
        URL_ENV: f"http://127.0.0.1:{vllm_port}",
        API_KEY_ENV: api_key,
        "TINYFORMER_ARTIFACTS": str(artifacts),
    }


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
