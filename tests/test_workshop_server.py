"""`tinyformer workshop serve`: the KV cache sized for a class, clear refusals, and one real server that holds a
simulated class of 50 learners running the batching lesson at once.

Cost control: one real vLLM start (the command itself, as an instructor runs it), shared by every vllm test
of this module; it is stopped with SIGTERM by the last test, which checks that nothing survives it.
"""

from __future__ import annotations

import os
import queue
import random
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import nbformat
import psutil
import pytest
from conftest import REPO

from tinyformer.data import Corpus
from tinyformer.memory import GiB
from tinyformer.serving import ServingConfigError, VLLMServer, read_metrics, vllm_log
from tinyformer.serving.prepare import lesson_export
from tinyformer.serving.server import API_KEY_ENV, URL_ENV, free_port
from tinyformer.workshop.classload import ClassLoadReport, batching_cell, simulate_class
from tinyformer.workshop.classroom import (
    NULL_BLOCKS,
    format_status,
    learner_env,
    learner_url,
    plan_class,
)

LEARNERS = 50


@pytest.fixture(scope="module")
def model_dir():
    """The model lessons 07-09 serve: the trained nano checkpoint, exported (trained first if there is none)."""
    return lesson_export("nano", progress=False)[2]


# ----- sizing, without a server ------------------------------------------------------------------


def test_kv_cache_is_sized_for_every_learner_at_once(model_dir):
    plan = plan_class(model_dir, learners=30, tokens_per_request=128, available_bytes=64 * GiB)
    per_token = 2 * 2 * 64 * 4  # K and V x n_layer x n_embd x float32
    assert plan.max_model_len == 128  # the model's n_positions, what the lessons' servers use
    assert plan.blocks_per_learner == 1  # 128 tokens = one block of 128
    assert plan.kv_cache_tokens == (30 * 1 + NULL_BLOCKS) * 128 == 3968
    assert plan.kv_cache_bytes == 3968 * per_token
    assert plan.budget.usable_blocks == 30  # every learner's request fits, next to vLLM's placeholder
    assert plan.budget.max_concurrency == 31.0
    assert plan.fits
    plan.check()


def test_partial_blocks_round_up(model_dir):
    plan = plan_class(model_dir, learners=3, tokens_per_request=20, available_bytes=64 * GiB)
    assert plan.kv_cache_tokens == (3 * 1 + 1) * 128  # 20 tokens still take a whole block


def test_a_class_that_does_not_fit_is_refused_with_what_to_change(model_dir):
    fits = plan_class(model_dir, learners=30, available_bytes=3 * GiB, reserve_bytes=GiB)
    assert fits.fits
    block = fits.budget.bytes_per_block
    tight = plan_class(model_dir, learners=30, reserve_bytes=0, available_bytes=fits.weight_bytes + 11 * block)
    with pytest.raises(ServingConfigError, match=r"does not fit in memory.*at most 10 fit"):
        tight.check()  # 11 blocks: vLLM's placeholder + 10 learners
    with pytest.raises(ServingConfigError, match=r"more than max_model_len=128"):
        plan_class(model_dir, learners=2, tokens_per_request=300, available_bytes=64 * GiB).check()


def test_status_line_and_learner_variables():
    line = format_status(
        {
            "vllm:num_requests_running": 4,
            "vllm:num_requests_waiting": 27,
            "vllm:kv_cache_usage_perc": 0.5,
            "vllm:num_preemptions_total": 2,
            "vllm:prompt_tokens_total": 1234,
            "vllm:generation_tokens_total": 5678,
        }
    )
    assert line == "running 4 | waiting 27 | KV cache 50.0% | preempted 2 | tokens in 1,234 / out 5,678"
    assert learner_env("http://10.0.0.5:8000", "k3y") == (
        f"export {URL_ENV}=http://10.0.0.5:8000\nexport {API_KEY_ENV}=k3y"
    )
    assert learner_url("127.0.0.1", 8000) == "http://127.0.0.1:8000"
    assert not learner_url("0.0.0.0", 8000).startswith("http://0.0.0.0")  # a reachable address instead


def test_the_simulated_cell_is_notebook_09s_batching_cell():
    """Same prompts (the notebook's own lines, run here), same concurrency, output length and options."""
    notebook = next((REPO / "notebooks").glob("09_*.ipynb"))
    cells = [c.source for c in nbformat.read(notebook, as_version=4).cells if c.cell_type == "code"]
    setup = next(source for source in cells if "Corpus(seed=" in source)
    namespace = {"random": random, "Corpus": Corpus}
    for line in setup.splitlines():
        if line.startswith(("rng = ", "prompts = ")):
            exec(line, namespace)
    batching = next(source for source in cells if "run_load(server, checked" in source)
    count = int(re.search(r"checked = prompts\[:(\d+)\]", batching).group(1))
    call = re.search(r"run_load\(server, checked, concurrency=(\d+), max_tokens=(\d+), ignore_eos=True\)", batching)
    cell = batching_cell()
    assert cell.prompts == tuple(namespace["prompts"][:count])
    assert (cell.concurrency, cell.max_tokens) == tuple(map(int, call.groups()))
    assert cell.extra == {"ignore_eos": True}


def test_the_simulated_class_refuses_a_remote_server():
    class Remote:
        url = "http://10.1.2.3:8000"

    with pytest.raises(ValueError, match="only loads a server on this machine"):
        simulate_class(Remote(), batching_cell(), learners=2)


# ----- one real server, started by the command --------------------------------------------------


class ServeCommand:
    """`python -m tinyformer.workshop serve ...` in the background, its output read line by line."""

    def __init__(self, model_dir, port: int, stderr_path: Path, key_file: Path):
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        env.pop(URL_ENV, None)
        args = ["--learners", str(LEARNERS), "--port", str(port), "--status-every", "0.5"]
        args += ["--api-key-file", str(key_file)]  # stdout is a pipe, not a terminal: the key must come from a file
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tinyformer.workshop", "serve", str(model_dir), *args],
            stdout=subprocess.PIPE,
            stderr=stderr_path.open("w"),  # vLLM's start-up progress; shown when something goes wrong
            text=True,
            env=env,
        )
        self.stderr_path = stderr_path
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.put(line.rstrip("\n"))

    def wait_for(self, pattern: str, seconds: float) -> re.Match:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            for line in self.seen:
                if match := re.search(pattern, line):
                    return match
            try:
                self.seen.append(self.lines.get(timeout=1.0))
            except queue.Empty:
                if self.process.poll() is not None:
                    break
        errors = self.stderr_path.read_text(errors="replace")[-2000:]
        raise AssertionError(f"no line matching {pattern!r}; output:\n" + "\n".join(self.seen) + f"\nstderr:\n{errors}")


@pytest.fixture(scope="module")
def class_server(model_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("serve")
    command = ServeCommand(model_dir, free_port(), folder / "stderr.txt", folder / "class.key")
    try:
        url = command.wait_for(rf"export {URL_ENV}=(\S+)", seconds=300).group(1)
        command.wait_for(rf"# export {API_KEY_ENV}=<the key in {re.escape(str(folder / 'class.key'))}>", seconds=5)
        yield command, url, (folder / "class.key").read_text().strip()
    finally:
        if command.process.poll() is None:  # the last test stops it; this only cleans up after a failure
            command.process.send_signal(signal.SIGTERM)
            command.process.wait(timeout=60)


@pytest.mark.vllm
@pytest.mark.slow
def test_the_server_announces_its_plan_key_and_variables(class_server):
    command, url, key = class_server
    assert url.startswith("http://127.0.0.1:")  # the default binds this machine only
    assert len(key) >= 32  # secrets.token_urlsafe(24), in the file
    predicted = command.wait_for(r"KV cache predicted: (.*)", 5).group(1)
    reported = command.wait_for(r"KV cache reported:\s+(.*)", 5).group(1)
    assert (
        predicted
        == reported
        == (
            f"CPU KV cache size: {(LEARNERS + 1) * 128:,} tokens, Maximum concurrency for 128 tokens per request: "
            f"{LEARNERS + 1:.2f}x"
        )
    )
    assert httpx.get(f"{url}/v1/models", timeout=10).status_code == 401
    assert httpx.get(f"{url}/v1/models", headers={"Authorization": f"Bearer {key}"}, timeout=10).status_code == 200


@pytest.mark.vllm
@pytest.mark.slow
def test_fifty_learners_run_the_batching_cell_at_once(class_server, model_dir, monkeypatch, capsys):
    _, url, key = class_server
    monkeypatch.setenv(URL_ENV, url)  # exactly what a learner's notebook does with the shared server
    monkeypatch.setenv(API_KEY_ENV, key)
    server = VLLMServer(model_dir, progress=False).start()
    assert server.shared and server.api_key == key

    report = simulate_class(server, batching_cell(), learners=LEARNERS)
    with capsys.disabled():
        print(f"\n{LEARNERS} simulated learners against one server:\n{report.table()}")
    assert report.failures == 0, report.first_failure
    assert report.requests == LEARNERS * len(batching_cell().prompts)
    assert report.all_match_solo, f"{LEARNERS - report.learners_matching_solo} learners got other tokens"
    assert report.running_peak > 1  # the server batched learners' requests together
    assert 0 < report.kv_usage_peak <= 1
    assert len(report.latencies) == report.requests and min(report.latencies) > 0
    assert max(report.latencies) <= max(report.learner_seconds) <= report.seconds  # a request lies within its cell


def test_latency_percentiles_interpolate_between_sorted_latencies():
    """Against a hand computation: 100 latencies 0.01..1.00 s, shuffled; p50 lies halfway between the 50th and
    51st (0.505 s), p95 at 5 % of the way from the 95th to the 96th (0.9505 s)."""
    latencies = [i / 100 for i in range(1, 101)]
    random.Random(0).shuffle(latencies)
    report = ClassLoadReport(
        learners=1,
        requests=100,
        failures=0,
        learners_matching_solo=1,
        latencies=latencies,
        learner_seconds=[1.0],
        seconds=1.0,
        kv_usage_peak=0.5,
        running_peak=1,
        waiting_peak=0,
        preemptions=0,
    )
    assert report.latency(50) == pytest.approx(0.505, abs=1e-12)
    assert report.latency(95) == pytest.approx(0.9505, abs=1e-12)


@pytest.mark.vllm
@pytest.mark.slow
def test_status_line_follows_the_load(class_server, model_dir):
    """Its own load (not what earlier tests sent): 4 requests of 8 tokens raise the status line's count by 32."""
    command, url, key = class_server
    before = read_metrics(url)["vllm:generation_tokens_total"]
    body = {"model": model_dir.name, "prompt": "the cat", "max_tokens": 8, "ignore_eos": True, "temperature": 0}
    for _ in range(4):
        reply = httpx.post(f"{url}/v1/completions", json=body, headers={"Authorization": f"Bearer {key}"}, timeout=60)
        assert reply.status_code == 200, reply.text
    expected = before + 4 * 8
    command.wait_for(rf"running 0 \| waiting 0 \| KV cache [\d.]+% .* out {expected:,.0f} \| peak KV", seconds=60)
    assert read_metrics(url)["vllm:num_requests_running"] == 0


def run_lesson(number: str) -> str:
    """Run notebook ``number`` top to bottom in a fresh kernel (this process's environment); its printed text."""
    from nbclient import NotebookClient

    path = next((REPO / "notebooks").glob(f"{number}_*.ipynb"))
    notebook = nbformat.read(path, as_version=4)
    NotebookClient(notebook, timeout=600, resources={"metadata": {"path": str(path.parent)}}).execute()
    return "".join(
        output.get("text", "") for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs
    )


@pytest.mark.vllm
@pytest.mark.slow
def test_lessons_07_to_09_use_the_shared_server_with_no_other_change(class_server, tmp_path, monkeypatch):
    """A learner's laptop with the two variables set: the unchanged lessons talk to the class's server, and the
    cells that need a server with settings of their own say they are skipped instead of starting one."""
    _, url, key = class_server
    monkeypatch.setenv(URL_ENV, url)
    monkeypatch.setenv(API_KEY_ENV, key)
    # Every server a lesson's kernel (this environment) starts writes its log here, and nothing else does: the
    # other test worker's servers, and `make test`'s own log folder, are elsewhere.
    logs = tmp_path / "lesson-server-logs"
    monkeypatch.setenv(vllm_log.LOG_DIR_ENV, str(logs))
    generated_before = read_metrics(url)["vllm:generation_tokens_total"]

    printed = {number: run_lesson(number) for number in ("07", "08", "09")}

    for number, text in printed.items():
        assert f"url='{url}'" in text and "shared)" in text, f"notebook {number} did not use the shared server"
    assert printed["08"].count("Skipped here") == 4  # max_model_len=64, two start-up errors, tensor parallelism
    assert printed["09"].count("Skipped here") == 1  # the tiny-cache and scheduler-limit servers
    assert "predicted: CPU KV cache size: 6,528 tokens" in printed["08"]  # notebook 08 predicts the class server
    assert not list(logs.glob("*.log")), f"a lesson started its own server: {sorted(logs.glob('*.log'))}"
    assert read_metrics(url)["vllm:generation_tokens_total"] > generated_before + 10_000  # the lessons' requests


@pytest.mark.vllm
@pytest.mark.slow
def test_sigterm_stops_the_server_and_everything_it_started(class_server):
    command, _, key = class_server
    vllm = [p for p in psutil.Process(command.process.pid).children(recursive=True)]
    assert vllm, "the command started no server process"

    command.process.send_signal(signal.SIGTERM)
    assert command.process.wait(timeout=60) == 0
    gone, alive = psutil.wait_procs(vllm, timeout=30)
    assert alive == [], f"still running after the command exited: {alive}"
    command.wait_for(r"stopping vLLM", seconds=5)
    # Its output is a log (the hub's, systemd's): the key is in no line of it, nor in vLLM's own log.
    vllm_log = Path(command.wait_for(r"^log: (\S+)", seconds=5).group(1)).read_text()
    for output in ("\n".join(command.seen), command.stderr_path.read_text(errors="replace"), vllm_log):
        assert key not in output
