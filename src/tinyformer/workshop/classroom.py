"""One vLLM server for a classroom: a KV cache sized for the learners, an API key, the two environment
variables learners set, and a one-line live status read from /metrics.

Sizing: every learner may have one request of ``tokens_per_request`` tokens (prompt + output) running at
the same moment. A request holds whole KV blocks, ceil(tokens / block_size) of them, and vLLM keeps one
block back for itself, so the cache gets ``learners x blocks per request + 1`` blocks. Bytes come from
the model's formula (2 x n_layer x n_embd x dtype bytes per token); the block rules are
:mod:`tinyformer.vllm_rules`'. Weights,
KV cache and a reserve for vLLM itself must fit in the memory that is free now, or we refuse up front.
"""

from __future__ import annotations

import secrets
import shlex
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from tinyformer import vllm_rules
from tinyformer.config import ModelConfig
from tinyformer.memory.formulas import GiB, format_bytes
from tinyformer.serving.budget import KVBudget, ServingConfigError, kv_bytes_per_token, model_config_from_dir
from tinyformer.serving.metrics import WATCHED, read_metrics
from tinyformer.serving.server import API_KEY_ENV, URL_ENV, check_port_free, is_loopback

NULL_BLOCKS = vllm_rules.NULL_BLOCKS  # vLLM's block pool holds one block back as a placeholder
# No per-request access log lines (they would record every learner's address) in the server's log;
# VLLMServer itself switches vLLM's usage statistics off.
PRIVATE_ARGS = ("--disable-uvicorn-access-log",)


@dataclass(frozen=True)
class ClassPlan:
    """The KV cache a class needs and whether it fits in the memory available."""

    model_dir: Path
    config: ModelConfig
    learners: int
    tokens_per_request: int
    max_model_len: int
    weight_bytes: int
    available_bytes: int
    reserve_bytes: int
    dtype: str = "float32"
    device: str = "cpu"  # "cpu" (vLLM's CPU backend, 128-token blocks) or "cuda" (16-token blocks)

    @property
    def block_size(self) -> int:
        return vllm_rules.BLOCK_SIZE[self.device]

    @property
    def blocks_per_learner(self) -> int:
        return vllm_rules.blocks_for_tokens(self.tokens_per_request, self.block_size)

    @property
    def kv_cache_tokens(self) -> int:
        """Token slots to ask vLLM for: every learner's request at once, plus vLLM's placeholder block."""
        return (self.learners * self.blocks_per_learner + NULL_BLOCKS) * self.block_size  # whole blocks

    @property
    def kv_cache_bytes(self) -> int:
        return self.kv_cache_tokens * kv_bytes_per_token(self.config, self.dtype)  # whole blocks already

    @property
    def budget(self) -> KVBudget:
        """What vLLM will make of this KV cache (its capacity line), from the serving lessons' formulas."""
        return KVBudget(
            config=self.config,
            max_model_len=self.max_model_len,
            kv_cache_bytes=self.kv_cache_bytes,
            dtype=self.dtype,
            device=self.device,
        )

    @property
    def needed_bytes(self) -> int:
        return self.kv_cache_bytes + self.weight_bytes + self.reserve_bytes

    @property
    def fits(self) -> bool:
        return self.needed_bytes <= self.available_bytes

    def summary(self) -> str:
        return (
            f"{self.learners} learners x {self.tokens_per_request} tokens = {self.blocks_per_learner} block(s) of "
            f"{self.block_size} tokens each, + {NULL_BLOCKS} block vLLM keeps back = {self.kv_cache_tokens:,} KV "
            f"tokens = {self.kv_cache_bytes:,} bytes ({format_bytes(self.kv_cache_bytes)}). With the weights "
            f"({format_bytes(self.weight_bytes)}) and a reserve of {format_bytes(self.reserve_bytes)} for vLLM "
            f"itself: {format_bytes(self.needed_bytes)} of the {format_bytes(self.available_bytes)} available."
        )

    def check(self) -> None:
        """Raise ServingConfigError, saying what to change, when the class does not fit."""
        if self.tokens_per_request > self.max_model_len:
            raise ServingConfigError(
                f"--tokens-per-request {self.tokens_per_request} is more than max_model_len={self.max_model_len}: "
                f"vLLM would reject such requests. Use at most {self.max_model_len} tokens per request."
            )
        if not self.fits:
            block = self.budget.bytes_per_block
            room = self.available_bytes - self.weight_bytes - self.reserve_bytes - NULL_BLOCKS * block
            most = max(room // (self.blocks_per_learner * block), 0)
            raise ServingConfigError(
                f"the class does not fit in memory: {self.summary()} Lower --learners (at most {most:,} fit) or "
                "--tokens-per-request, free memory, or lower --reserve-gib."
            )


def plan_class(
    model_dir: str | Path,
    *,
    learners: int,
    tokens_per_request: int | None = None,
    max_model_len: int | None = None,
    reserve_bytes: int = 2 * GiB,
    available_bytes: int | None = None,
    dtype: str = "float32",
) -> ClassPlan:
    """Size the KV cache for ``learners`` requests of ``tokens_per_request`` tokens (default: max_model_len,
    which defaults to the model's n_positions) and measure the memory available now (unless given)."""
    config = model_config_from_dir(model_dir)
    max_model_len = max_model_len or config.n_positions
    device = "cuda" if _cuda_available() else "cpu"
    return ClassPlan(
        model_dir=Path(model_dir),
        config=config,
        learners=learners,
        tokens_per_request=tokens_per_request or max_model_len,
        max_model_len=max_model_len,
        weight_bytes=_weight_bytes(Path(model_dir)),
        available_bytes=available_bytes if available_bytes is not None else _available_bytes(device),
        reserve_bytes=reserve_bytes,
        dtype=dtype,
        device=device,
    )


def format_status(metrics: dict[str, float]) -> str:
    """One line from vLLM's /metrics: ``running 3 | waiting 0 | KV cache 12.5% | preempted 0 | ...``."""
    value = {name: metrics.get(name, 0.0) for name in WATCHED}
    return (
        f"running {value['vllm:num_requests_running']:.0f} | waiting {value['vllm:num_requests_waiting']:.0f} | "
        f"KV cache {100 * value['vllm:kv_cache_usage_perc']:.1f}% | "
        f"preempted {value['vllm:num_preemptions_total']:.0f} | "
        f"tokens in {value['vllm:prompt_tokens_total']:,.0f} / out {value['vllm:generation_tokens_total']:,.0f}"
    )


def learner_env(url: str, api_key: str | None) -> str:
    """The shell lines learners paste before starting JupyterLab."""
    lines = [f"export {URL_ENV}={shlex.quote(url)}"]
    if api_key:
        lines.append(f"export {API_KEY_ENV}={shlex.quote(api_key)}")  # a key from a file may hold $, ; or quotes
    return "\n".join(lines)


def learner_url(host: str, port: int) -> str:
    """The URL learners use: this machine's network address when listening on every interface."""
    if host in ("0.0.0.0", "::", ""):
        host = _network_address()
    return f"http://{host}:{port}"


def run_class_server(args) -> int:
    """``tinyformer workshop serve``: plan, refuse or start, announce, then a status line until Ctrl-C."""

    plan = plan_class(
        args.model_dir,
        learners=args.learners,
        tokens_per_request=args.tokens_per_request,
        max_model_len=args.max_model_len,
        reserve_bytes=int(args.reserve_gib * GiB),
    )
    plan.check()
    from tinyformer.serving.cli import read_or_create_key, serve_until_interrupted

    host = "0.0.0.0" if args.public else args.host
    check_port_free(host, args.port)
    show_key = sys.stdout.isatty()  # the instructor's screen; never a log (the hub's, systemd's, a pipe)
    if not show_key and not args.api_key_file:
        raise ValueError(
            "standard output is not a terminal (a log?): the class's new key would be written into it, or known to "
            "nobody. Pass --api-key-file FILE (a FILE that does not exist gets a new key, mode 0600) and give "
            "learners what it holds."
        )
    api_key = read_or_create_key(args.api_key_file)[0] if args.api_key_file else secrets.token_urlsafe(16)
    server = class_server(
        plan, host=host, port=args.port, api_key=api_key, timeout=args.timeout, guard_every_route=args.guard_every_route
    )
    print(f"class plan: {plan.summary()}")

    def announce(server):
        _announce(server, plan, learner_url(host, args.port), api_key if show_key else None, args.api_key_file)

    def wait(server) -> str:
        peak = watch(server, every=args.status_every)
        return f"vLLM exited on its own (peak KV usage {100 * peak:.1f}%)"

    return serve_until_interrupted(server, "tinyformer workshop serve", announce, wait)


def class_server(
    plan: ClassPlan,
    *,
    host: str,
    port: int | None,
    api_key: str | None,
    timeout: float = 300.0,
    progress: bool = True,
    guard_every_route: bool = False,
):
    """A (not yet started) VLLMServer with the plan's KV cache and no per-request access log. A server beyond
    loopback always guards every route; ``guard_every_route`` does so on loopback too (a JupyterHub)."""
    from tinyformer.serving.server import VLLMServer

    return VLLMServer(
        plan.model_dir,
        max_model_len=plan.max_model_len,
        kv_cache_tokens=plan.kv_cache_tokens,
        api_key=api_key,
        host=host,
        port=port,
        startup_timeout=timeout,
        progress=progress,
        extra_args=PRIVATE_ARGS,
        shared=False,  # the instructor's own shell may have the class variables set: start a server anyway
        guard_every_route=guard_every_route or None,  # None: VLLMServer's rule (on beyond loopback)
    )


def watch(server, every: float = 2.0, stream=None) -> float:
    """Print the status line every ``every`` seconds while the server runs; return the peak KV usage."""
    stream = stream or sys.stdout
    one_line = stream.isatty()
    peak, last = 0.0, None
    while server.is_running():
        try:
            metrics = read_metrics(server)
        except Exception as error:  # a scrape can fail while vLLM is busy; the next one usually works
            line = f"(could not read /metrics: {type(error).__name__})"
        else:
            peak = max(peak, metrics.get("vllm:kv_cache_usage_perc", 0.0))
            line = f"{time.strftime('%H:%M:%S')}  {format_status(metrics)} | peak KV {100 * peak:.1f}%"
        if one_line:
            stream.write("\r\033[K" + line)  # rewrite the same line in a terminal
            stream.flush()
        elif line.split("  ", 1)[-1] != last:  # in a log file, only changes
            print(line, file=stream, flush=True)
            last = line.split("  ", 1)[-1]
        time.sleep(every)
    return peak


# ----- helpers ------------------------------------------------------------------------------------


def _announce(server, plan: ClassPlan, url: str, api_key: str | None, key_file: Path | None) -> None:
    """What the instructor reads once the server is ready; ``api_key`` None keeps the key out of the output
    (it names ``key_file`` instead)."""
    reported = server.reported
    print(f"vLLM is ready after {server.ready_seconds:.0f} s, serving {server.model!r} on {server.host}:{server.port}")
    print(f"KV cache predicted: {plan.budget.log_line()}")
    print(f"KV cache reported:  {'(not found in the log)' if reported is None else reported.log_line()}")
    print(f"log: {server.log_path}")
    print("\nLearners: run these two lines in the terminal they start JupyterLab from:\n")
    print(learner_env(url, api_key))
    if api_key is None:
        print(f"# export {API_KEY_ENV}=<the key in {key_file}>   (not printed: this output is not a terminal)")
    reach = "this machine only" if is_loopback(server.host) else "the network"
    if server.guards_every_route:
        where = f"{reach}; every route but /health needs the key"
    else:
        where = f"{reach}; /v1 needs the key, /health, /metrics and /tokenize stay open"
    print(f"\n(listening for {where}.) Ctrl-C stops it.\n")


def _weight_bytes(model_dir: Path) -> int:
    files = list(model_dir.glob("*.safetensors")) + list(model_dir.glob("*.bin"))
    return sum(f.stat().st_size for f in files)


def _available_bytes(device: str) -> int:
    if device == "cuda":
        import torch

        return torch.cuda.mem_get_info()[0]
    import psutil

    return psutil.virtual_memory().available


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def _network_address() -> str:
    """This machine's address on its main network (no packet is sent: UDP connect only picks a route)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("10.255.255.255", 1))
            return s.getsockname()[0]
        except OSError:
            return socket.gethostname()
