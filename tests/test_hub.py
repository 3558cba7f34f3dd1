"""A real JupyterHub for a class on one machine (hub/jupyterhub_config.py), as learners use it.

The shipped config is loaded as it is; the test adds only what a test needs on top: JupyterHub's shared-password
authenticator (what replaced the dummy one with a password) and its simple local-process spawner (no system users),
free ports, and an admin service token made for this run (never printed). The proxy is the configurable-http-proxy
that `make install` put in hub/node_modules. Three learners' servers are spawned through the Hub's REST API; in
each, a kernel started through Jupyter Server's REST API runs notebook 07's own cells up to its greedy comparison
over the kernel websocket (the Jupyter messaging protocol), against the class's vLLM server, which the hub runs
as a service under an account of its own (a throw-away one the test creates: the hub runs as root here, as in a class).

Cost control: one hub, one vLLM start (the service), the learners' servers spawned while vLLM starts.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import httpx
import nbformat
import psutil
import pytest
import websocket
from conftest import REPO, interpreter_for_every_account
from jupyter_client.jsonutil import json_default
from jupyter_client.session import Session

from tinyformer.generate import generate
from tinyformer.paths import artifacts_dir
from tinyformer.serving import vllm_log
from tinyformer.serving.metrics import parse_metrics, scrape
from tinyformer.serving.prepare import lesson_export
from tinyformer.serving.server import API_KEY_ENV, URL_ENV, free_port
from tinyformer.workshop.hub import (
    class_server_service,
    learner_environment,
    proxy_command,
    seed_before_spawn,
    seed_learner_artifacts,
)

HUB_DIR = REPO / "hub"
LEARNERS = ("ada", "alan", "grace")
COUNTERS = ("vllm:request_success_total", "vllm:prompt_tokens_total", "vllm:generation_tokens_total")
WAIT_SECONDS = 420  # a guard against hangs (vLLM took 215 s to start on a 2-core box at load 6), not a target

# Loaded on top of the shipped config: what a test needs, nothing a class would use.
TEST_CONFIG = """
import os
load_subconfig({shipped!r})
c.JupyterHub.authenticator_class = "shared-password"  # JupyterHub's own; the dummy one with a password
c.SharedPasswordAuthenticator.user_password = os.environ["HUB_TEST_PASSWORD"]
c.Authenticator.allow_all = True
c.JupyterHub.spawner_class = "simple"  # every learner runs as the test's user: no system users needed
if os.geteuid() == 0:  # CI containers run as root, which Jupyter Server refuses unless told
    c.Spawner.args = ["--allow-root"]
c.SimpleLocalProcessSpawner.home_dir_template = {homes!r} + "/{{username}}"
c.Spawner.http_timeout = c.Spawner.start_timeout = {wait}  # three servers and vLLM start at once on 2 cores
c.JupyterHub.tornado_settings = {{"slow_spawn_timeout": 0}}  # a spawn request answers at once: all spawn together
c.JupyterHub.hub_port = {hub_port}
c.ConfigurableHTTPProxy.api_url = "http://127.0.0.1:{proxy_api_port}"
c.JupyterHub.services.append({{"name": "test-admin", "api_token": os.environ["HUB_TEST_TOKEN"]}})
c.JupyterHub.load_roles = [
    {{
        "name": "test-admin",
        "scopes": ["admin:users", "admin:servers", "read:servers", "access:servers"],
        "services": ["test-admin"],
    }}
]
"""


# ----- the config's pieces, without a hub -----------------------------------------------------------


def test_the_service_keeps_the_key_off_its_command_line_and_guards_loopback():
    service = class_server_service("/m/nano-hf", learners=30, port=8100, key_file="/k/key", python="py")
    command = service["command"]
    assert command[:5] == ["py", "-m", "tinyformer.workshop", "serve", "/m/nano-hf"]
    assert command[command.index("--api-key-file") + 1] == "/k/key"  # a path: the key itself never
    assert command[command.index("--host") + 1] == "127.0.0.1" and "--guard-every-route" in command
    assert "url" not in service  # not routed through the hub's proxy: unreachable from outside the machine


def test_learners_get_the_server_and_the_key():
    env = learner_environment(vllm_port=8100, api_key="k3y")
    assert env == {URL_ENV: "http://127.0.0.1:8100", API_KEY_ENV: "k3y"}
    with pytest.raises(ValueError, match="one non-empty word"):
        learner_environment(vllm_port=8100, api_key="")


def test_each_learner_starts_from_a_copy_of_the_class_model(tmp_path):
    """Copied with their times (the export stays newer than the checkpoint); a learner's own files are kept."""
    school = tmp_path / "class"
    (school / "nano-hf").mkdir(parents=True)
    (school / "nano.pt").write_bytes(b"weights")
    (school / "nano-hf" / "config.json").write_text("{}")
    os.utime(school / "nano.pt", (1_000, 1_000))
    learner = tmp_path / "ada" / "artifacts"

    copied = seed_learner_artifacts(school, learner)
    assert copied == [learner / "nano.pt", learner / "nano-hf"]
    assert (learner / "nano.pt").read_bytes() == b"weights" and (learner / "nano-hf" / "config.json").is_file()
    assert (learner / "nano.pt").stat().st_mtime == 1_000 < (learner / "nano-hf" / "config.json").stat().st_mtime

    (learner / "nano.pt").write_bytes(b"trained by ada in lesson 04")
    assert seed_learner_artifacts(school, learner) == []  # nothing is overwritten
    assert (learner / "nano.pt").read_bytes() == b"trained by ada in lesson 04"

    (school / "nano.pt").unlink()
    with pytest.raises(FileNotFoundError, match=r"missing: nano.pt\)\. Train .*tinyformer train --preset nano"):
        seed_learner_artifacts(school, tmp_path / "alan")


def test_the_hook_points_each_learner_at_their_own_folder(tmp_path):
    school = tmp_path / "class"
    (school / "nano-hf").mkdir(parents=True)
    (school / "nano.pt").write_bytes(b"weights")
    spawner = SimpleNamespace(home_dir=str(tmp_path / "ada"), environment={URL_ENV: "http://127.0.0.1:8100"})
    seed_before_spawn(school)(spawner)
    assert spawner.environment == {
        URL_ENV: "http://127.0.0.1:8100",
        "TINYFORMER_ARTIFACTS": str(tmp_path / "ada" / "artifacts"),
    }
    assert (tmp_path / "ada" / "artifacts" / "nano.pt").is_file()
    nobody = SimpleNamespace(user=SimpleNamespace(name="no-such-learner-here"), environment={})
    with pytest.raises(ValueError, match="no user of this machine"):
        seed_before_spawn(school)(nobody)


def test_a_missing_proxy_says_how_to_install_it(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"make install.*npm ci --prefix hub"):
        proxy_command(tmp_path)


# ----- one real hub -------------------------------------------------------------------------------


def lesson_cells(number: str, up_to: str) -> list[str]:
    """Notebook ``number``'s code cells, in order, up to and including the first that contains ``up_to``."""
    path = next((REPO / "notebooks").glob(f"{number}_*.ipynb"))
    cells = [c.source for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code"]
    last = next(i for i, source in enumerate(cells) if up_to in source)
    return cells[: last + 1]


class ProcessTree:
    """Every process started under ``root`` (hub, proxy, service, vLLM, learners' servers, kernels), sampled
    while the test runs: a process whose parent exits is re-parented and would no longer be found at the end."""

    def __init__(self, root: int):
        self.root = psutil.Process(root)
        self.seen: dict[psutil.Process, list[str]] = {}  # process -> the command lines it showed (vLLM renames its own)
        self.parent: dict[psutil.Process, psutil.Process | None] = {}  # process -> its parent when first seen
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            time.sleep(0.2)

    def sample(self) -> None:
        try:
            tree = [self.root, *self.root.children(recursive=True)]
        except psutil.Error:
            return
        for process in tree:
            try:
                command = " ".join(process.cmdline()) or process.name()
            except psutil.Error:
                continue
            commands = self.seen.setdefault(process, [])
            if command not in commands:
                commands.append(command)
            if process not in self.parent:
                try:
                    self.parent[process] = process.parent()
                except psutil.Error:
                    self.parent[process] = None

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def alive(self) -> list[psutil.Process]:
        return [p for p in self.seen if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]

    def kinds(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for process in self.seen:
            kind = self.kind(process)
            counts[kind] = counts.get(kind, 0) + 1
        return counts

    def kind(self, process: psutil.Process) -> str:
        """What ``process`` was, from the first of its command lines that says (vLLM renames its processes; a
        process on its way out shows only a truncated name)."""
        commands = self.seen[process]
        parent = self.parent.get(process)
        if parent in self.seen and commands[0] in self.seen[parent]:
            # First sampled between fork and exec, still showing its parent's command line (a learner's server
            # starting a kernel or a helper; the hub, which the test's wrapper became, starting the proxy): what it
            # became is what it is; a second learner's server or hub it is not.
            if len(commands) == 1:
                return f"fork of a {self.kind(parent)}"
            commands = commands[1:]
        kinds = [process_kind(command) for command in commands]
        return next((kind for kind in kinds if not kind.startswith("other")), kinds[0])


def process_kind(command: str) -> str:
    rules = [
        # conftest.interpreter_for_every_account's wrapper, and its shell's forks, before it execs the hub: its
        # command line holds the hub's. "other" lets what the process became (the hub) name it.
        ("mount --move", "other: the test's mount-namespace wrapper"),
        ("jupyterhub-singleuser", "learner's server"),
        ("ipykernel_launcher", "kernel"),
        ("configurable-http-proxy", "proxy"),
        ("tinyformer.workshop serve", "class server command"),
        ("watchdog.py", "vLLM watchdog"),
        ("vllm.entrypoints.openai.api_server", "vLLM API server"),
        ("VLLM::EngineCor", "vLLM engine"),  # the kernel's 15-character process name once it exits
        ("multiprocessing.resource_tracker", "vLLM's resource tracker"),
        ("jupyter_builder/yarn", "jupyter-lsp's language-server search"),  # node and npm, at a server's start
        ("npm ", "jupyter-lsp's language-server search"),
        ("git rev-parse", "vLLM's version probe"),
        ("jupyterhub -f", "hub"),
    ]
    return next((kind for marker, kind in rules if marker in command), f"other: {command[:80]}")


class Hub:
    """`jupyterhub -f` the shipped config plus the test's, in a folder of its own; its REST API as an admin."""

    def __init__(self, folder: Path, model_dir: Path, vllm_account: str):
        self.folder = folder
        self.port, self.vllm_port = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.token, self.password = secrets.token_urlsafe(24), secrets.token_urlsafe(12)
        self.key_file = folder / "class-key"
        config = folder / "test_config.py"
        config.write_text(
            TEST_CONFIG.format(
                shipped=str(HUB_DIR / "jupyterhub_config.py"),
                homes=str(folder / "homes"),
                wait=WAIT_SECONDS,
                hub_port=free_port(),
                proxy_api_port=free_port(),
            )
        )
        env = {
            **os.environ,
            "TINYFORMER_HUB_URL": self.url,
            "TINYFORMER_HUB_MODEL": str(model_dir),
            "TINYFORMER_HUB_LEARNERS": str(len(LEARNERS)),
            "TINYFORMER_HUB_VLLM_PORT": str(self.vllm_port),
            "TINYFORMER_HUB_KEY_FILE": str(self.key_file),
            "TINYFORMER_HUB_VLLM_USER": vllm_account,  # what the shipped config does by default, with a test account
            "TINYFORMER_ARTIFACTS": str(artifacts_dir()),
            "HUB_TEST_TOKEN": self.token,  # the environment, not the command line
            "HUB_TEST_PASSWORD": self.password,
        }
        for name in (URL_ENV, API_KEY_ENV):  # the hub's own shell must not decide the learners' server
            env.pop(name, None)
        self.log_path = folder / "hub.log"
        self.process = subprocess.Popen(
            [*interpreter_for_every_account(), str(Path(sys.executable).with_name("jupyterhub")), "-f", str(config)],
            cwd=folder,
            stdout=self.log_path.open("wb"),
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        self.tree = ProcessTree(self.process.pid)
        self.api = httpx.Client(base_url=self.url, headers={"Authorization": f"token {self.token}"}, timeout=60)

    def log_tail(self, lines: int = 40) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.is_file() else ""
        return "\n".join(text.splitlines()[-lines:]).replace(self.token, "<token>")

    def fail(self, what: str) -> None:
        pytest.fail(f"{what}\n--- last lines of the hub's log ({self.log_path}):\n{self.log_tail()}", pytrace=False)

    def wait_for(self, what: str, ready) -> None:
        deadline = time.monotonic() + WAIT_SECONDS
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self.fail(f"the hub exited (code {self.process.returncode}) while waiting for {what}")
            try:
                if ready():
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        self.fail(f"{what}: not after {WAIT_SECONDS} s")

    def spawn(self, name: str) -> None:
        self.api.post(f"/hub/api/users/{name}").raise_for_status()
        reply = self.api.post(f"/hub/api/users/{name}/server")
        if reply.status_code not in (201, 202):
            self.fail(f"spawning {name}'s server: HTTP {reply.status_code} {reply.text}")

    def server_ready(self, name: str) -> bool:
        servers = self.api.get(f"/hub/api/users/{name}").raise_for_status().json()["servers"]
        return bool(servers.get("", {}).get("ready"))

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)  # what Ctrl-C or systemd does: the hub stops what it started
        try:
            return self.process.wait(timeout=WAIT_SECONDS)
        finally:
            self.tree.stop()
            self.api.close()

    def kill_leftovers(self) -> None:
        """After a failure: nothing this test started may outlive it (the pids it saw start, one by one)."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        for process in self.tree.alive():
            try:
                process.kill()  # psutil checks the pid still belongs to the process we saw
            except psutil.Error:
                pass


class Kernel:
    """One kernel in a learner's Jupyter Server, driven over its websocket with the Jupyter messaging protocol
    (JSON frames: jupyter_client's Session builds the messages, websocket-client carries them)."""

    def __init__(self, hub: Hub, user: str):
        reply = hub.api.post(f"/user/{user}/api/kernels", json={"name": "python3"})
        if reply.status_code != 201:
            hub.fail(f"starting a kernel for {user}: HTTP {reply.status_code} {reply.text}")
        self.user, self.id = user, reply.json()["id"]
        self.session = Session(username=user)
        self.socket = websocket.create_connection(
            f"ws://127.0.0.1:{hub.port}/user/{user}/api/kernels/{self.id}/channels",
            header=[f"Authorization: token {hub.token}"],
            timeout=WAIT_SECONDS,
        )

    def run(self, code: str) -> str:
        """Execute ``code``; its printed output. An error in the cell fails the test with the traceback."""
        message = self.session.msg("execute_request", {"code": code, "silent": False, "stop_on_error": True})
        message["channel"] = "shell"
        self.socket.send(json.dumps(message, default=json_default))
        printed, replied, idle = [], False, False
        while not (replied and idle):
            reply = json.loads(self.socket.recv())
            if reply.get("parent_header", {}).get("msg_id") != message["msg_id"]:
                continue
            kind, content = reply["msg_type"], reply["content"]
            if kind == "stream":
                printed.append(content["text"])
            elif kind == "error":
                traceback = re.sub(r"\x1b\[[0-9;]*m", "", "\n".join(content["traceback"]))
                pytest.fail(f"{self.user}'s kernel failed on:\n{code}\n{traceback}", pytrace=False)
            elif kind == "execute_reply":
                replied = True
            elif kind == "status" and content["execution_state"] == "idle":
                idle = True
        return "".join(printed)

    def close(self) -> None:
        self.socket.close()


def learner_runs_lesson_07(hub: Hub, user: str, cells: list[str]) -> dict:
    kernel = Kernel(hub, user)
    try:
        printed = "".join(kernel.run(cell) for cell in cells)
        result = kernel.run(  # what the lesson's cells left in the kernel
            'import json; print(json.dumps({"prompt": prompt, "max_tokens": body["max_tokens"], '
            '"token_ids": choice["token_ids"], "url": server.url, "shared": server.shared, '
            '"artifacts": str(export_dir.parent)}))'
        )
    finally:
        kernel.close()
    return {"printed": printed, **json.loads(result.strip().splitlines()[-1])}


def memory(process: psutil.Process) -> tuple[int, int]:
    """(RSS, USS) in bytes: resident memory, and the part of it no other process shares (what one more learner
    adds; RSS counts shared libraries again in every process)."""
    info = process.memory_full_info()
    return info.rss, info.uss


@pytest.fixture(scope="module")
def model_dir():
    """The class's model: the trained nano checkpoint, exported (trained first if there is none)."""
    return lesson_export("nano", progress=False)[2]


@pytest.mark.hub
@pytest.mark.vllm
@pytest.mark.slow
def test_three_learners_run_lesson_07_on_one_hub_with_the_shared_server(model_dir, shared_tmp, new_account, capsys):
    tmp_path, vllm_account = shared_tmp, new_account()  # the hub's folder and vLLM's account (both need root)
    cells = lesson_cells("07", up_to='choice["token_ids"] == ours')
    started, phases = time.monotonic(), {}  # seconds from the start to the end of each phase, printed at the end
    hub = Hub(tmp_path, model_dir, vllm_account.pw_name)
    try:
        hub.wait_for("the hub's API", lambda: hub.api.get("/hub/api/").status_code == 200)
        phases["hub up"] = time.monotonic() - started
        for user in LEARNERS:  # the hub spawns them at once, while its vLLM service starts
            hub.spawn(user)
        for user in LEARNERS:
            hub.wait_for(f"{user}'s server", lambda user=user: hub.server_ready(user))
        phases["learners' servers ready"] = time.monotonic() - started

        key = hub.key_file.read_text().strip()
        info = hub.key_file.stat()  # readable by exactly vLLM's account (and root)
        assert (info.st_uid, stat.S_IMODE(info.st_mode)) == (vllm_account.pw_uid, 0o600)
        vllm = SimpleNamespace(url=f"http://127.0.0.1:{hub.vllm_port}", headers={"Authorization": f"Bearer {key}"})
        hub.wait_for("the vLLM service's /health", lambda: httpx.get(f"{vllm.url}/health").status_code == 200)
        phases["vLLM healthy"] = time.monotonic() - started
        assert httpx.get(f"{vllm.url}/metrics").status_code == 401  # guarded on loopback too: a shared machine
        before = parse_metrics(scrape(vllm), COUNTERS)

        with ThreadPoolExecutor(len(LEARNERS)) as pool:
            runs = pool.map(lambda user: learner_runs_lesson_07(hub, user, cells), LEARNERS)
            try:
                results = dict(zip(LEARNERS, runs, strict=True))
            except websocket.WebSocketException as error:  # the hub's log says whose server or kernel went, and why
                seconds = time.monotonic() - started
                hub.fail(f"a learner's kernel connection closed mid-lesson after {seconds:.0f} s: {error!r}")
        after = parse_metrics(scrape(vllm), COUNTERS)
        phases["lesson cells run"] = time.monotonic() - started

        # Every learner talked to the class's server and got the instructor's greedy tokens.
        model, tokenizer, _ = lesson_export("nano", progress=False)  # the instructor's copy of the class model
        first = results[LEARNERS[0]]
        prompt_ids = tokenizer(first["prompt"])["input_ids"]
        instructor = generate(model, prompt_ids, first["max_tokens"]).tokens[0]
        for user, result in results.items():
            assert result["shared"] and result["url"] == vllm.url, f"{user}'s lesson did not use the class's server"
            assert result["token_ids"] == instructor, f"{user} got other greedy tokens"
            assert result["artifacts"] == str(tmp_path / "homes" / user / "artifacts"), "not the learner's own folder"
        # The server saw them: one completion per learner (the other cells use /v1/models, /tokenize, /metrics).
        assert after["vllm:request_success_total"] - before["vllm:request_success_total"] == len(LEARNERS)
        assert after["vllm:prompt_tokens_total"] - before["vllm:prompt_tokens_total"] == len(LEARNERS) * len(prompt_ids)
        assert after["vllm:generation_tokens_total"] - before["vllm:generation_tokens_total"] == len(LEARNERS) * len(
            instructor
        )

        # What one learner costs the machine: their Jupyter server and kernel, as they are now.
        hub.tree.sample()
        servers = {
            p.environ().get("JUPYTERHUB_USER"): p for p in hub.tree.alive() if hub.tree.kind(p) == "learner's server"
        }
        assert set(servers) == set(LEARNERS)
        kernels = {
            user: next(c for c in servers[user].children() if "ipykernel" in " ".join(c.cmdline())) for user in servers
        }
        learner_memory = {user: (memory(servers[user]), memory(kernels[user])) for user in LEARNERS}
        vllm_kinds = ("vLLM API server", "vLLM engine")  # the worker runs inside the engine
        vllm_rss = sum(memory(p)[0] for p in hub.tree.alive() if hub.tree.kind(p) in vllm_kinds)

        # The class's server runs as its account, not as root like the hub.
        service_side = ("class server command", "vLLM watchdog", "vLLM API server", "vLLM engine")
        service_uids = {hub.tree.kind(p): set(p.uids()) for p in hub.tree.alive() if hub.tree.kind(p) in service_side}
        assert set(service_uids) == set(service_side), f"{service_uids}"
        assert all(uids == {vllm_account.pw_uid} for uids in service_uids.values()), f"{service_uids}"

        # No secret on any command line: the class's key, the admin token, the password.
        for command in (command for commands in hub.tree.seen.values() for command in commands):
            for secret in (key, hub.token, hub.password):
                assert secret not in command, f"a secret is on the command line of {process_kind(command)}"
    except BaseException:
        hub.kill_leftovers()
        raise

    code = hub.stop()
    phases["hub stopped"] = time.monotonic() - started
    gone, alive = psutil.wait_procs(list(hub.tree.seen), timeout=60)
    hub.kill_leftovers()
    collect_service_logs(Path(vllm_account.pw_dir))
    kinds = hub.tree.kinds()
    assert code == 0, f"the hub exited with {code}:\n{hub.log_tail()}"
    assert key not in hub.log_path.read_text(errors="replace"), "the class's key is in the hub's log"
    assert alive == [], f"still running after the hub stopped: {[hub.tree.seen[p] for p in alive]}"
    for kind, count in [("hub", 1), ("proxy", 1), ("class server command", 1), ("vLLM API server", 1)]:
        assert kinds.get(kind) == count, f"expected {count} {kind} process, saw {kinds}"
    assert kinds.get("vLLM engine", 0) >= 1 and kinds.get("vLLM watchdog") == 1, f"{kinds}"
    learner_side = {
        f"{p.pid} (parent {getattr(hub.tree.parent.get(p), 'pid', None)})": hub.tree.seen[p]
        for p in hub.tree.seen
        if hub.tree.kind(p) in ("learner's server", "kernel")
    }
    assert kinds.get("learner's server") == kinds.get("kernel") == len(LEARNERS), f"{kinds}; {learner_side}"
    with capsys.disabled():
        print(f"\nprocesses started under the hub: {kinds}")
        print("seconds from the start: " + ", ".join(f"{phase} {seconds:.0f}" for phase, seconds in phases.items()))
        print(f"each learner's completion: {len(prompt_ids)} prompt tokens, {len(instructor)} generated")
        print(f"the class's vLLM server (API server, engine): RSS {vllm_rss / 2**20:.0f} MiB")
        for user, ((server_rss, server_uss), (kernel_rss, kernel_uss)) in learner_memory.items():
            print(
                f"{user}: Jupyter server RSS {server_rss / 2**20:.0f} MiB (USS {server_uss / 2**20:.0f}), kernel after "
                f"lesson 07 RSS {kernel_rss / 2**20:.0f} MiB (USS {kernel_uss / 2**20:.0f})"
            )


def collect_service_logs(service_home: Path) -> None:
    """The class's vLLM logs in its account's home (only that account may write there), copied to where
    `make test` counts the suite's vLLM starts ($TINYFORMER_VLLM_LOG_DIR), before the account is removed."""
    folder = os.environ.get(vllm_log.LOG_DIR_ENV)
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        for log in (service_home / "artifacts" / "logs").glob("*.log"):
            shutil.copy(log, Path(folder) / f"hub-service-{log.name}")


@pytest.mark.hub
def test_the_proxy_is_installed_where_the_config_looks():
    """`make install` runs `npm ci --prefix hub`; the config's proxy_command finds the binary it installs."""
    version = subprocess.run([*proxy_command(HUB_DIR), "--version"], capture_output=True, text=True, timeout=60)
    lock = json.loads((HUB_DIR / "package-lock.json").read_text())
    assert version.stdout.strip() == lock["packages"]["node_modules/configurable-http-proxy"]["version"]
