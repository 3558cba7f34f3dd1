"""JupyterHub for a tinyformer class on one machine (docs/workshop.md, "One machine for the class: JupyterHub").

    .venv/bin/jupyterhub -f hub/jupyterhub_config.py      # from the folder the hub keeps its state in

- Every learner gets JupyterLab from this repository's environment (the suite, vLLM's client side, everything).
- The class's vLLM server is a service of the hub: started with it, restarted if it dies, stopped with it.
  It runs as an unprivileged account of its own (tinyformer-vllm), listens on 127.0.0.1 only and asks for the key
  on every route but GET /health.
- The hub runs as root and imports this file and the suite from REPO: only root may be able to change them
  (docs/workshop.md, "Security on the hub").
- Every learner's server starts with TINYFORMER_VLLM_URL and TINYFORMER_VLLM_API_KEY set, so lessons 07-13
  use the class's server with nobody typing a key, and TINYFORMER_ARTIFACTS naming ~/artifacts, a folder of their
  own that starts with a copy of the class's trained model (the one the server serves).

Edit the settings below, or set the environment variables they read. Authentication and spawning are left
to JupyterHub's defaults (PAM: each learner is a user of this machine; LocalProcessSpawner: each learner's
server runs as that user); docs/workshop.md lists the alternatives.
"""

import os
import sys
from pathlib import Path

from tinyformer.workshop.hub import (
    SERVICE_ACCOUNT,
    checked_hub_url,
    class_key,
    class_server_service,
    learner_environment,
    proxy_command,
    seed_before_spawn,
    service_account,
)

c = get_config()  # noqa: F821 (JupyterHub defines it when it loads this file)

HUB_DIR = Path(__file__).resolve().parent
REPO = HUB_DIR.parent

# ----- the class ------------------------------------------------------------------------------------
# The hub's address. Loopback by default: beyond it, only with TLS (a certificate and its key), or behind a reverse
# proxy that does TLS (docs/workshop.md): plain HTTP would carry learners' passwords in the clear.
HUB_URL = os.environ.get("TINYFORMER_HUB_URL", "http://127.0.0.1:8000")
SSL_CERT = os.environ.get("TINYFORMER_HUB_SSL_CERT")
SSL_KEY = os.environ.get("TINYFORMER_HUB_SSL_KEY")
# The class's trained model: `tinyformer train --preset nano` + `tinyformer export` wrote it (the day before).
ARTIFACTS = Path(os.environ.get("TINYFORMER_ARTIFACTS", REPO / "artifacts"))
MODEL_DIR = Path(os.environ.get("TINYFORMER_HUB_MODEL", ARTIFACTS / "nano-hf"))
LEARNERS = int(os.environ.get("TINYFORMER_HUB_LEARNERS", "30"))  # sizes vLLM's KV cache
VLLM_PORT = int(os.environ.get("TINYFORMER_HUB_VLLM_PORT", "8100"))  # on 127.0.0.1 only
# The account vLLM runs as (the hub runs as root; vLLM, which every learner talks to, must not). Create it once:
#   sudo useradd --system --create-home --home-dir /var/lib/tinyformer-vllm --shell /usr/sbin/nologin tinyformer-vllm
VLLM_ACCOUNT = service_account(os.environ.get("TINYFORMER_HUB_VLLM_USER", SERVICE_ACCOUNT))
# The class's API key: created (mode 0600) on the first start if missing, next to the hub's cookie secret, and
# owned by VLLM_ACCOUNT (the hub, root, reads it anyway).
KEY_FILE = Path(os.environ.get("TINYFORMER_HUB_KEY_FILE", "tinyformer-class-key")).resolve()
API_KEY = class_key(KEY_FILE, VLLM_ACCOUNT)

# ----- the hub and its proxy ------------------------------------------------------------------------
c.JupyterHub.bind_url = checked_hub_url(HUB_URL, ssl_cert=SSL_CERT, ssl_key=SSL_KEY)
if SSL_CERT:
    c.JupyterHub.ssl_cert, c.JupyterHub.ssl_key = SSL_CERT, SSL_KEY
c.ConfigurableHTTPProxy.command = proxy_command(HUB_DIR)  # installed by `make install` (hub/package.json)

# ----- the class's vLLM server: a service the hub manages, as VLLM_ACCOUNT ----------------------------
c.JupyterHub.services = [
    class_server_service(MODEL_DIR, learners=LEARNERS, port=VLLM_PORT, key_file=KEY_FILE, account=VLLM_ACCOUNT),
]

# ----- every learner's server -----------------------------------------------------------------------
# jupyterhub-singleuser from the hub's own environment: the suite, JupyterLab and the same package versions.
c.Spawner.cmd = [str(Path(sys.executable).with_name("jupyterhub-singleuser"))]
c.Spawner.default_url = "/lab"
c.Spawner.environment = learner_environment(vllm_port=VLLM_PORT, api_key=API_KEY)
# ~/artifacts of their own (lesson 04 saves there), starting from the class's trained model: the one vLLM serves.
c.Spawner.pre_spawn_hook = seed_before_spawn(ARTIFACTS)

# ----- who may log in (see docs/workshop.md for NativeAuthenticator, OAuth and TLJH) ----------------
# c.Authenticator.admin_users = {"instructor"}
# c.Authenticator.allowed_users = {"ada", "alan", "grace"}
