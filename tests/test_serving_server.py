"""A real vLLM server (CPU wheel in CI) serving an exported tinyformer model.

Cost control (a vLLM start takes 25-60 s on 2 cores): one module-scoped server answers every
request-level test, and the 22 start/stop cycles are mostly failures that happen early for real
(refusals, vLLM's own start-up errors, interrupts and timeouts at different start-up stages) plus
one full start interrupted mid-request and one stopped mid-stream. Every cycle scans the process table for survivors.
"""

from __future__ import annotations

import _thread
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
import psutil
import pytest
import torch
from conftest import REPO

from tinyformer.config import ModelConfig
from tinyformer.export import export_hf
from tinyformer.generate import generate
from tinyformer.model import Transformer
from tinyformer.paths import artifacts_dir
from tinyformer.serving import (
    MetricsSampler,
    RequestRejected,
    ServingConfigError,
    VLLMServer,
    VLLMStartupError,
    complete,
    read_metrics,
    run_load,
    tokenize,
    vllm_bench,
    vllm_log,
)
from tinyformer.tokenizer import build_tokenizer

pytestmark = pytest.mark.vllm

API_KEY = "test-key"
OUTPUT_TOKENS = 16


def decisive_model(seed: int = 0) -> Transformer:
    """The micro preset with large random weights: top logits lie far apart (so a batched and a solo
    forward pass cannot break a near-tie differently) and the output depends on the prompt."""
    torch.manual_seed(seed)
    model = Transformer(ModelConfig.preset("micro", vocab_size=len(build_tokenizer())))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.dim() == 2:
                param.normal_(0.0, 2.0 / param.shape[1] ** 0.5)
            if name.endswith("wte.weight"):
                param.normal_(0.0, 1.0)
    return model.eval()


def decisive_export(folder: Path):
    """(model, tokenizer, folder): decisive_model() exported to ``folder``, for the modules that serve it."""
    tokenizer = build_tokenizer()
    model = decisive_model()
    return model, tokenizer, export_hf(model, tokenizer, folder)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    return decisive_export(tmp_path_factory.mktemp("serving") / "micro")


def random_prompts(tokenizer, n: int, seed: int = 0) -> list[str]:
    words = [w for w in tokenizer.get_vocab() if not w.startswith("<")]
    rng = random.Random(seed)
    return [" ".join(rng.choice(words) for _ in range(rng.randint(3, 12))) for _ in range(n)]


# ----- finding survivors ---------------------------------------------------------------------


def is_vllm(proc: psutil.Process) -> bool:
    try:
        return proc.name().startswith("VLLM::") or "vllm" in " ".join(proc.cmdline())
    except psutil.Error:
        return False


def vllm_children() -> set[int]:
    return {child.pid for child in psutil.Process().children(recursive=True) if is_vllm(child)}


def vllm_leftovers(process_groups: list[int], already_running: set[int] = frozenset()) -> list[str]:
    """Live processes in the given process groups, and vLLM processes anywhere below this test process
    (except ``already_running``: the module's shared server)."""
    found = {}
    for proc in psutil.process_iter():
        try:
            if proc.status() != psutil.STATUS_ZOMBIE and os.getpgid(proc.pid) in process_groups:
                found[proc.pid] = f"{proc.pid} {proc.name()}"
        except (psutil.Error, ProcessLookupError):
            continue
    for child in psutil.Process().children(recursive=True):
        if is_vllm(child) and child.pid not in already_running:
            found[child.pid] = f"{child.pid} {child.name()} (child of the test)"
    return sorted(found.values())


def wait_for_no_leftovers(process_groups: list[int], seconds: float, already_running: set[int]) -> list[str]:
    deadline = time.monotonic() + seconds
    while (left := vllm_leftovers(process_groups, already_running)) and time.monotonic() < deadline:
        time.sleep(0.5)
    return left


# ----- the shared server for request-level tests ---------------------------------------------


@pytest.fixture(scope="module")
def server(exported):
    _, _, folder = exported
    srv = VLLMServer(
        folder, kv_cache_tokens=64 * 128, api_key=API_KEY, log_iterations=True, shared=False, progress=False
    )
    with srv:
        yield srv
    assert vllm_leftovers([srv.pid]) == [], "a normal stop left processes behind"


def test_reported_kv_capacity_is_the_prediction(server):
    reported, predicted = server.reported, server.predicted
    assert reported is not None, f"no KV line in {server.log_path}"
    assert (reported.tokens, reported.max_concurrency) == (predicted.tokens, predicted.max_concurrency)
    assert (reported.block_size, reported.num_blocks) == (128, predicted.num_blocks) == (128, 64)
    logs = os.environ.get(vllm_log.LOG_DIR_ENV) or artifacts_dir() / "logs"  # `make test` collects them elsewhere
    assert server.log_path.parent == Path(logs) and "KV cache size" in server.log_text()


def test_the_start_records_vllms_milestones_in_order(server):
    """What lesson 07's start-up picture draws: each milestone when the log first showed it, in vLLM's order."""
    seen = list(server.stage_seconds)
    assert seen == [milestone for _, milestone, _ in vllm_log.STAGES if milestone in seen]
    assert {"API server parsed its arguments", "engine process started", "KV cache allocated"} <= set(seen)
    times = list(server.stage_seconds.values())
    assert 0 < times[0] and times == sorted(times) and times[-1] <= server.ready_seconds


def test_the_one_worker_runs_inside_the_engine_process_on_any_core(server):
    """Two vLLM processes, not three (VLLMServer.worker_in_engine), and the engine free to use every core: vLLM's
    own CPU binding would pin it to core 0, where every other server side by side would compute too."""
    names = [p.name() for p in psutil.Process(server.pid).children(recursive=True)]
    assert any(name.startswith("VLLM::EngineCor") for name in names), names
    assert not any(name.startswith("VLLM::Worker") for name in names), names
    engine = next(p for p in psutil.Process(server.pid).children(recursive=True) if p.name().startswith("VLLM::Eng"))
    assert engine.cpu_affinity() == sorted(os.sched_getaffinity(0))
    assert "--distributed-executor-backend=uni" in server.command()
    assert "'distributed_executor_backend': 'uni'" in server.log_text()  # vLLM kept it (its CPU default is "mp")


def test_binds_to_loopback_unless_told_otherwise(server):
    leader = psutil.Process(server.pid)  # the watchdog; vLLM's API server is its child
    listening = [
        c.laddr
        for proc in [leader, *leader.children(recursive=True)]
        for c in proc.net_connections(kind="tcp")
        if c.status == psutil.CONN_LISTEN and c.laddr.port == server.port
    ]
    assert listening and all(addr.ip == "127.0.0.1" for addr in listening)


def test_api_key_guards_v1_but_not_the_rest_on_loopback(server):
    """On loopback, vLLM's own rule: the key guards /v1 only (a network server guards every route:
    test_serving_safety.py). Keyless clients can still tokenize, read metrics and the version."""
    models = f"{server.api_url}/models"
    assert not server.guards_every_route
    assert httpx.get(models).status_code == 401
    assert httpx.get(models, headers={"Authorization": "Bearer wrong-key"}).status_code == 401
    assert httpx.post(f"{server.api_url}/completions", json={"model": server.model, "prompt": "the"}).status_code == 401
    assert httpx.get(models, headers=server.headers).status_code == 200
    for path in ("/health", "/metrics", "/version", "/openapi.json"):
        assert httpx.get(f"{server.url}{path}", timeout=30).status_code == 200, path
    keyless = httpx.post(f"{server.url}/tokenize", json={"model": server.model, "prompt": "the cat"}, timeout=30)
    assert keyless.status_code == 200 and keyless.json()["count"] == 2


def test_served_model_tokenizes_and_generates_like_tinyformer(server, exported):
    model, tokenizer, _ = exported
    served = httpx.get(f"{server.api_url}/models", headers=server.headers).json()["data"][0]
    assert (served["id"], served["max_model_len"]) == ("micro", 256)
    for prompt in random_prompts(tokenizer, 4, seed=1):
        ids = tokenizer(prompt)["input_ids"]
        assert tokenize(server, prompt) == ids
        reply = complete(server, prompt, max_tokens=24, ignore_eos=True)
        assert reply.prompt_token_ids == ids
        assert reply.token_ids == generate(model, ids, 24).tokens[0], prompt


def test_a_prompt_longer_than_max_model_len_is_refused_clearly(server):
    with pytest.raises(RequestRejected, match=r"(?s)HTTP 400.*max_model_len is 256 tokens"):
        complete(server, " ".join(["the cat"] * 150), max_tokens=4)  # 300 tokens


def test_200_requests_at_concurrency_50_all_succeed_unmixed(server, exported):
    _, tokenizer, _ = exported
    distinct = random_prompts(tokenizer, 40, seed=2)
    solo = {p: complete(server, p, max_tokens=OUTPUT_TOKENS, ignore_eos=True).token_ids for p in distinct}
    assert len(set(map(tuple, solo.values()))) >= 20, "prompts must lead to different outputs for this to test mixing"
    prompts = distinct * 5
    random.Random(3).shuffle(prompts)

    before, steps_before = read_metrics(server), len(server.iterations())
    with MetricsSampler(server, interval=0.05) as sampler:
        result = run_load(server, prompts, concurrency=50, max_tokens=OUTPUT_TOKENS, ignore_eos=True)
    assert result.failures == []
    assert [r.prompt for r in result.replies] == prompts
    mixed = [r.prompt for r in result.replies if r.token_ids != solo[r.prompt]]
    assert mixed == [], f"{len(mixed)} responses differ from the same prompt sent alone"
    assert result.max_in_flight == 50  # the semaphore let exactly 50 requests be open at once
    generated = wait_for_counter(server, "vllm:generation_tokens_total", before, 200 * OUTPUT_TOKENS)
    assert generated == 200 * OUTPUT_TOKENS
    assert max(step.requests for step in server.iterations()[steps_before:]) > 1  # really batched together
    assert sampler.samples and not sampler.errors  # /metrics stayed readable during the load


def test_vllms_benchmark_client_and_our_load_generator_agree_on_one_trace(server, exported):
    """vLLM's own client (`vllm bench serve`, run through Python) and run_load send the same 24 prompts at a
    concurrency of 8: the same greedy texts and token counts, no failures, and each its own view of the timing
    (per request, vLLM's TTFT <= its end-to-end latency; both clients' throughputs printed, not compared: timing is the
    benchmark's job, benchmarks/bench_clients.py). run_load streamed gets the same tokens and a TTFT per request, with
    vLLM's usage summary at the end of each stream as vLLM's client asks for it."""
    _, tokenizer, _ = exported
    prompts = random_prompts(tokenizer, 24, seed=5)
    theirs = vllm_bench(server, prompts, output_len=OUTPUT_TOKENS, max_concurrency=8)
    ours = run_load(server, prompts, concurrency=8, max_tokens=OUTPUT_TOKENS, ignore_eos=True)
    # As vLLM's client asks: the stream then ends with a usage summary that has no choices (run_load skips it).
    usage = {"stream_options": {"include_usage": True}}
    streamed = run_load(server, prompts, concurrency=8, max_tokens=OUTPUT_TOKENS, ignore_eos=True, stream=True, **usage)
    assert theirs.completed == len(prompts) and ours.failures == [] and streamed.failures == []
    assert theirs.output_lens == [len(r.token_ids) for r in ours.replies] == [OUTPUT_TOKENS] * len(prompts)
    assert theirs.texts == [r.text for r in ours.replies] == [r.text for r in streamed.replies]
    assert [r.token_ids for r in streamed.replies] == [r.token_ids for r in ours.replies]  # pieces joined in order
    assert {r.finish_reason for r in streamed.replies} == {"length"}  # the last piece says why it ended
    assert all(0 < r.ttft <= r.latency for r in streamed.replies) and {r.ttft for r in ours.replies} == {None}
    ttfts, latencies = theirs.raw["ttfts"], theirs.raw["latencies"]  # seconds, per request
    assert all(0 < first <= whole for first, whole in zip(ttfts, latencies, strict=True))
    assert theirs.ms("ttft") == pytest.approx(1e3 * statistics.median(ttfts))  # ms() reads vLLM's median
    assert theirs.ms("e2el", 99) > theirs.ms("e2el")  # ... and its 99th percentile, a different number
    assert " Serving Benchmark Result " in theirs.report  # vLLM's printed table, kept instead of printed
    print(f"vLLM's client {theirs.output_throughput:.0f} tok/s, ours {ours.tokens_per_second:.0f} tok/s")


def wait_for_counter(server, name: str, before: dict, expected: float, seconds: float = 10.0) -> float:
    """The counter's growth since ``before`` (the server updates its metrics just after answering)."""
    deadline = time.monotonic() + seconds
    while True:
        grown = read_metrics(server)[name] - before[name]
        if grown >= expected or time.monotonic() > deadline:
            return grown
        time.sleep(0.2)


def test_shared_server_from_environment_is_used_and_left_running(server, exported, monkeypatch):
    _, _, folder = exported
    monkeypatch.setenv("TINYFORMER_VLLM_URL", server.url + "/v1")
    monkeypatch.setenv("TINYFORMER_VLLM_API_KEY", API_KEY)
    with VLLMServer(folder) as shared:
        assert shared.shared and shared.pid is None
        assert shared.reported.tokens == server.reported.tokens and shared.model == "micro"
        assert (
            complete(shared, "the cat", max_tokens=4).token_ids == complete(server, "the cat", max_tokens=4).token_ids
        )
    assert server.is_running()
    with pytest.raises(VLLMStartupError, match="runs with KV cache 8,192 tokens"):
        VLLMServer(folder, kv_cache_tokens=1280).start()
    monkeypatch.setenv("TINYFORMER_VLLM_API_KEY", "wrong-key")
    with pytest.raises(VLLMStartupError, match="refused the API key"):
        VLLMServer(folder).start()


# ----- 20 start/stop cycles: nothing may survive --------------------------------------------


@contextmanager
def interrupt_when(condition, poll: float = 0.05):
    """Raise KeyboardInterrupt in the main thread once ``condition()`` holds, as Jupyter's interrupt
    button does (it sends SIGINT, which Python turns into KeyboardInterrupt in the main thread).

    Python's own SIGINT handler is put in place for the block, as a kernel has it: a test run started in the
    background by a non-interactive shell inherits SIGINT ignored, and then ``interrupt_main`` does nothing."""
    done = threading.Event()
    handler = signal.signal(signal.SIGINT, signal.default_int_handler)

    def watch():
        while not done.is_set():
            try:
                if condition():
                    _thread.interrupt_main()
                    return
            except Exception:  # the condition may look at a process that is not there yet
                pass
            done.wait(poll)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        yield
    finally:
        done.set()
        watcher.join()
        signal.signal(signal.SIGINT, handler)


def after(seconds: float):
    start = time.monotonic()
    return lambda server: time.monotonic() - start > seconds


def logged(text: str):
    """True once the server's log holds ``text`` (e.g. the engine's "Starting to load model")."""
    return lambda server: server.log_path is not None and text in server.log_text()


def small_server(folder, **kwargs) -> VLLMServer:
    return VLLMServer(folder, **{"kv_cache_tokens": 1280, "shared": False, "progress": False, **kwargs})


def refused(folder, tmp_path, **kwargs) -> list[int]:
    with pytest.raises(ServingConfigError):
        small_server(folder, **kwargs)
    return []


def refused_head_size(folder, tmp_path) -> list[int]:
    odd = shutil.copytree(folder, tmp_path / "heads16")
    config = json.loads((odd / "config.json").read_text())
    (odd / "config.json").write_text(json.dumps({**config, "n_head": 8}))  # head size 128 / 8 = 16
    with pytest.raises(ServingConfigError, match="head size"):
        small_server(odd)
    return []


def vllm_rejects(folder, tmp_path, match: str, background: bool = False, **kwargs) -> list[int]:
    server = small_server(folder, check=False, **kwargs)
    with pytest.raises(VLLMStartupError, match=match) as error:
        if background:  # the error reaches whoever waits for the start, as it would from start()
            started = server.start_in_background()
            assert not started.done()
            started.result(timeout=600)
        else:
            server.start()
    assert "What it means" in str(error.value) and str(server.log_path) in str(error.value)
    return [server.pid]


def port_in_use(folder, tmp_path) -> list[int]:
    """Somebody else's HTTP server on the port, one that answers /health with 200: refused before spawning."""
    with http_server_answering_200() as port:
        server = small_server(folder, port=port)
        with pytest.raises(ServingConfigError, match=f"cannot listen on 127.0.0.1:{port}"):
            server.start()
        assert httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200
    assert server.pid is None
    return []


@contextmanager
def http_server_answering_200():
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Healthy(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    with ThreadingHTTPServer(("127.0.0.1", 0), Healthy) as http:
        thread = threading.Thread(target=http.serve_forever, daemon=True)
        thread.start()
        try:
            yield http.server_address[1]
        finally:
            http.shutdown()


def api_process_killed(folder, tmp_path) -> list[int]:
    """vLLM's API process dies (SIGKILL) while serving: its engine must not run on as an orphan."""
    already_running = vllm_children()
    server = small_server(folder)
    with server:
        (api,) = psutil.Process(server.pid).children()  # the watchdog's one child
        assert any(p.name().startswith("VLLM::Engine") for p in api.children(recursive=True))
        assert complete(server, "the cat", max_tokens=4).token_ids  # serving
        api.kill()
        assert wait_for_no_leftovers([server.pid], 30, already_running) == []
    return [server.pid]


def interrupted_start(folder, tmp_path, when) -> list[int]:
    server = small_server(folder)
    with pytest.raises(KeyboardInterrupt), interrupt_when(lambda: server.pid is not None and when(server)):
        server.start()
    return [server.pid]


def timed_out(folder, tmp_path, seconds: float) -> list[int]:
    server = small_server(folder, startup_timeout=seconds)
    with pytest.raises(VLLMStartupError, match=f"not healthy after {seconds:.0f} s"):
        server.start()
    return [server.pid]


def interrupted_twice(folder, tmp_path) -> list[int]:
    """A second interrupt while stop() waits for a clean shutdown: it must kill instead of waiting."""
    server = small_server(folder)
    start = time.monotonic()
    interrupts = []

    def second_interrupt(srv) -> bool:
        if not interrupts and time.monotonic() - start > 3:
            interrupts.append(time.monotonic())
            _thread.interrupt_main()
            return False
        return bool(interrupts) and time.monotonic() - interrupts[0] > 0.3

    with pytest.raises(KeyboardInterrupt), interrupt_when(lambda: server.pid is not None and second_interrupt(server)):
        server.start()
    return [server.pid]


def interrupted_mid_request(folder, tmp_path) -> list[int]:
    server = small_server(folder, kv_cache_tokens=4096)
    prompts = ["the cat near the dog"] * 512  # a load that lasts many seconds, so the interrupt lands mid-way
    with pytest.raises(KeyboardInterrupt), server:
        with interrupt_when(lambda: read_metrics(server)["vllm:num_requests_running"] > 0):
            run_load(server, prompts, concurrency=16, max_tokens=200, ignore_eos=True)
    return [server.pid]


def stopped_mid_stream(folder, tmp_path) -> list[int]:
    """The server crashes (SIGKILL to its process group) while a reply streams (lesson 07, section 9): the client gets
    the reply's first pieces, then an openai.APIError (the dropped connection), and no piece says the reply finished.
    With a graceful stop() instead, 2 of about 8 runs got the whole reply: vLLM may finish what is in flight. A crowd
    of 32 other long requests keeps the engine busy for seconds, so the stop lands mid-reply even on a slow box
    (alone, nano streams 100 tokens in well under a second: the whole reply could arrive before the stop)."""
    import openai

    server = small_server(folder, kv_cache_tokens=8192).start()
    load = dict(concurrency=32, max_tokens=100, ignore_eos=True, raise_on_error=False)
    crowd = threading.Thread(target=run_load, args=(server, ["the cat near the dog"] * 32), kwargs=load, daemon=True)
    crowd.start()
    deadline = time.monotonic() + 60
    while read_metrics(server)["vllm:num_requests_running"] < 32 and time.monotonic() < deadline:
        time.sleep(0.05)  # the engine runs the whole crowd before our stream starts
    stream = server.client().completions.create(
        model=server.model, prompt="the cat", max_tokens=100, temperature=0, stream=True,
        extra_body={"ignore_eos": True},
    )  # fmt: skip
    pieces = []
    with pytest.raises(openai.APIError):
        for chunk in stream:
            pieces.append(chunk)
            if len(pieces) == 1:
                os.killpg(server.pid, signal.SIGKILL)  # a crash: a graceful stop() may still finish the reply
    crowd.join(timeout=60)
    server.stop()
    assert 1 <= len(pieces) < 100 and all(c.choices[0].finish_reason is None for c in pieces)
    return [server.pid]


CHILD_SCRIPT = """
import sys, threading, time
from tinyformer.serving import VLLMServer

server = VLLMServer(sys.argv[1], kv_cache_tokens=1280, shared=False, progress=False)

def print_pid_once_started():
    while server.pid is None:
        time.sleep(0.05)
    print(server.pid, flush=True)

if sys.argv[2] == "thread":  # we exit while start() runs in a thread: only the atexit finalizer can clean up
    threading.Thread(target=server.start, daemon=True).start()
    print_pid_once_started()
    time.sleep(float(sys.argv[3]))
else:  # start() in the main thread; the test SIGKILLs us, so no Python cleanup runs at all
    threading.Thread(target=print_pid_once_started, daemon=True).start()
    server.start()
"""


def child_python(folder, how: str, seconds: float = 0.0) -> tuple[subprocess.Popen, int]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(SRC), os.environ.get("PYTHONPATH")]))}
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD_SCRIPT, str(folder), how, str(seconds)], stdout=subprocess.PIPE, text=True, env=env
    )
    return child, int(child.stdout.readline())


SRC = REPO / "src"


def parent_exits(folder, tmp_path) -> list[int]:
    child, pgid = child_python(folder, "thread", seconds=8)
    assert child.wait(timeout=120) == 0
    return [pgid]


def parent_killed(folder, tmp_path) -> list[int]:
    """SIGKILL (a crashed or force-restarted kernel): no Python cleanup runs; the watchdog that leads
    the server's process group sees its pipe close and must bring vLLM down."""
    already_running = vllm_children()
    child, pgid = child_python(folder, "main")
    deadline = time.monotonic() + 120
    while not any(p.name().startswith("VLLM::Engine") for p in psutil.Process(pgid).children(recursive=True)):
        assert time.monotonic() < deadline and child.poll() is None
        time.sleep(0.2)
    child.kill()
    child.wait()
    assert wait_for_no_leftovers([pgid], 60, already_running) == []
    return [pgid]


CYCLES = {
    "refused: head size 16": refused_head_size,
    "refused: max_model_len > n_positions": lambda f, t: refused(f, t, max_model_len=512),
    "refused: KV budget below one block": lambda f, t: refused(f, t, kv_cache_tokens=128),
    "refused: KV budget below one request": lambda f, t: refused(f, t, kv_cache_tokens=256),
    "vLLM rejects max_model_len (started in the background)": lambda f, t: vllm_rejects(
        f, t, "max_model_len \\(512\\)", background=True, max_model_len=512
    ),
    "vLLM rejects the KV budget": lambda f, t: vllm_rejects(f, t, "To serve at least one request", kv_cache_tokens=256),
    "port already in use": port_in_use,
    "interrupt after 0.5 s": lambda f, t: interrupted_start(f, t, after(0.5)),
    "interrupt after 1 s": lambda f, t: interrupted_start(f, t, after(1)),
    "interrupt after 2 s": lambda f, t: interrupted_start(f, t, after(2)),
    "interrupt after 3 s": lambda f, t: interrupted_start(f, t, after(3)),
    "interrupt after 5 s": lambda f, t: interrupted_start(f, t, after(5)),
    "interrupt after 10 s": lambda f, t: interrupted_start(f, t, after(10)),
    "interrupt while the engine loads the model": lambda f, t: interrupted_start(f, t, logged("to load model")),
    "start-up timeout 3 s": lambda f, t: timed_out(f, t, 3),
    "start-up timeout 8 s": lambda f, t: timed_out(f, t, 8),
    "second interrupt while stopping": interrupted_twice,
    "interrupt mid-request": interrupted_mid_request,
    "stopped mid-stream": stopped_mid_stream,
    "interpreter exit while starting": parent_exits,
    "parent SIGKILLed once the engine runs": parent_killed,
    "API process SIGKILLed while serving": api_process_killed,
}


def test_there_are_twenty_two_cycles():
    assert len(CYCLES) == 22


@pytest.mark.slow
@pytest.mark.spread  # each cycle starts (or refuses) servers of its own; `exported` is a cheap export
@pytest.mark.parametrize("cycle", list(CYCLES))
def test_start_stop_cycle_leaves_no_process(cycle, exported, tmp_path):
    _, _, folder = exported
    already_running = vllm_children()
    process_groups = CYCLES[cycle](folder, tmp_path)
    assert vllm_leftovers(process_groups, already_running) == []
