"""vLLM's offline engine, ``vllm.LLM``, inside this Python process: no server, no HTTP, the same engine.

    with offline_llm(export_dir, max_model_len=48, kv_cache_tokens=256, extra_args=vllm_args()) as llm:
        llm.generate({"prompt": "<image> the", "multi_modal_data": {"image": picture}}, SamplingParams(temperature=0))

The settings are VLLMServer's (the same KV budget in tokens, the same dtype choice, the same up-front refusals) and
``extra_args`` are the server's command-line flags, read by vLLM's own parser (command_lines.py), so one export's
needs (``export.llava.vllm_args``) are written once for both.

Why in-process: on CPU, vLLM runs ``LLM``'s engine core in a process of its own and its worker in a third one,
started with multiprocessing's *spawn*, which re-imports the calling script (a script must guard
``if __name__ == "__main__":``) and pickles what it sends; VLLM_ENABLE_V1_MULTIPROCESSING=0 and the "uni" executor
keep both here (VLLMServer keeps its worker in its engine's process the same way). vLLM's default works in a Jupyter
kernel too, but each start imports vLLM twice more (lesson 10's VLM on a busy 2-core box: ready after 59 s that way,
10-26 s in-process; a second in-process engine, vLLM imported already: 3-4 s). The price: the engine changes this
process while it lives (torch's thread count and ``torch.set_num_threads`` itself, which vLLM's CPU worker replaces
with a function that only warns; ``gc.freeze()``; environment variables, and vLLM's cache of them, filled at
start-up; with ``model_impl="transformers"``, the transformers classes it builds the model from, which it decorates in
place for torch.compile, so that a model built from them later fails with "Current vLLM config is not set").
Leaving the ``with`` block shuts the engine down and puts those back.

What a server shows in its log and /metrics, read in-process instead (the test suite checks vLLM's rules this way,
seconds per engine against 20-25 CPU-seconds per server start): the KV capacity with ``reported_kv(llm)``, from the
engine's cache config (vLLM logs the capacity line once per process for a given text, so a second engine with the
same capacity logs nothing); counters need ``log_stats=True`` (``vllm.LLM`` turns them off) and are read with
``metrics_text()``; each engine step's line needs ``log_iterations=True`` and is read with ``iterations_logged()``
(here every request of one ``generate`` call reaches the scheduler before its first step; requests sent to a server
at once arrive one by one, and a busy CPU spreads them over several steps); a refusal is raised here, as the
exception the server's log shows.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import io
import logging
import os
import shlex
import warnings
from pathlib import Path

import torch

from tinyformer.serving.budget import (
    BLOCK_SIZE,
    KVBudget,
    ServingConfigError,
    check_serving_config,
    model_config_from_dir,
)
from tinyformer.serving.server import (
    NO_TELEMETRY_ENV,
    _check_pooling,
    _device,
    _dtype_for,
    kv_budget_bytes,
)
from tinyformer.serving.vllm_log import ReportedKV, parse_iterations


def engine_settings(extra_args: list[str] | tuple[str, ...]) -> dict:
    """Server flags (``["--model-impl", "transformers", ...]``) as ``vllm.LLM`` keyword arguments, read by vLLM's
    own parser: ``{"model_impl": "transformers", ...}``. Flags only the API server has are refused."""
    from vllm.engine.arg_utils import EngineArgs

    from tinyformer.serving.command_lines import read_command_line

    read = read_command_line(shlex.join(["vllm", "serve", "MODEL", *extra_args]))
    if read.refusal or read.unknown:
        raise ServingConfigError(f"vLLM's parser refuses {list(extra_args)}: {read.refusal or read.unknown}.")
    settings = {name: value for name, value in read.sets.items() if name != "model_tag"}
    server_only = sorted(set(settings) - {f.name for f in dataclasses.fields(EngineArgs)})
    if server_only:
        raise ServingConfigError(
            f"{server_only} are settings of vLLM's API server, not of its engine: an offline LLM has no server. "
            "Leave them out of extra_args."
        )
    return settings


def llm_settings(
    model_dir: str | Path,
    *,
    max_model_len: int | None = None,
    kv_cache_tokens: int | None = None,
    kv_cache_bytes: int | None = None,
    block_size: int | None = None,
    dtype: str | None = None,
    pooling: str | None = None,
    extra_args: list[str] | tuple[str, ...] = (),
    check: bool = True,
    log_stats: bool = False,
    log_iterations: bool = False,
) -> dict:
    """The keyword arguments of ``vllm.LLM`` for ``model_dir``, as ``VLLMServer`` would start it (same defaults,
    same refusals before anything starts; ``check=False`` lets vLLM meet a problem itself, to see its own error).
    log_stats: keep vLLM's counters, as a server does for its /metrics (``vllm.LLM`` leaves them off): read them
    with ``metrics_text()``. log_iterations: log every engine step, as ``VLLMServer(log_iterations=True)`` does
    (counters on too): read the steps with ``iterations_logged()``."""
    model_dir = Path(model_dir)
    config = model_config_from_dir(model_dir)
    device = _device()
    max_model_len = max_model_len if max_model_len is not None else config.n_positions
    block_size = block_size or BLOCK_SIZE[device]
    dtype = _dtype_for(model_dir, dtype, check=check)
    kv_bytes = kv_budget_bytes(
        config, kv_cache_tokens, kv_cache_bytes, max_model_len=max_model_len, dtype=dtype, block_size=block_size
    )
    if check:
        check_serving_config(
            KVBudget(
                config,
                max_model_len=max_model_len,
                kv_cache_bytes=kv_bytes,
                dtype=dtype,
                device=device,
                block_size=block_size,
            )
        )
    settings = {
        "model": str(model_dir),
        "dtype": dtype,
        "max_model_len": max_model_len,
        "kv_cache_memory_bytes": kv_bytes,  # without it vLLM reserves 92 % of the machine's memory, and refuses
        "block_size": block_size,
        "enforce_eager": True,  # no torch.compile: about 35 s on 2 cores, no faster for a model this small
        "distributed_executor_backend": "uni",  # the worker in this process
        "disable_log_stats": not (log_stats or log_iterations),
        "enable_logging_iteration_details": log_iterations,
    }
    if _check_pooling(pooling, None, max_model_len, check=check) is not None:
        from vllm.config import PoolerConfig

        settings.update(runner="pooling", convert="embed", pooler_config=PoolerConfig(pooling_type=pooling))
    return settings | engine_settings(extra_args)


def reported_kv(llm) -> ReportedKV:
    """What this engine's capacity line and /metrics say about its KV cache (``VLLMServer.reported`` for a server),
    read off the engine's config, where vLLM formats that line from."""
    config = llm.llm_engine.vllm_config
    cache = config.cache_config
    return ReportedKV(
        device="GPU" if _device() == "cuda" else "CPU",
        tokens=cache.kv_cache_size_tokens,
        max_model_len=config.model_config.max_model_len,
        max_concurrency=cache.kv_cache_max_concurrency,
        block_size=cache.block_size,
        num_blocks=cache.num_gpu_blocks,
    )


def metrics_text() -> str:
    """vLLM's counters in this process as a server's /metrics shows them (Prometheus text), for the parsers of
    ``tinyformer.serving.metrics``. Needs ``offline_llm(..., log_stats=True)``. The counters of every engine this
    process has run add up: read them before and after what you measure."""
    import prometheus_client

    return prometheus_client.generate_latest().decode()


STAT_LOGGER = "vllm.v1.metrics.loggers"  # the logger of vLLM's module that writes each engine step's line


@contextlib.contextmanager
def iterations_logged():
    """The engine steps that an offline engine started with ``log_iterations=True`` runs inside the block: a list,
    filled when the block ends. vLLM's stat logger writes the line a server's log shows for each step
    (``VLLMServer.iterations()``) in this process, where it is read at INFO however quiet the engine is."""
    lines = io.StringIO()
    handler = logging.StreamHandler(lines)
    stat_logger = logging.getLogger(STAT_LOGGER)
    stat_logger.addHandler(handler)
    steps: list = []
    try:
        yield steps
    finally:
        stat_logger.removeHandler(handler)
        steps.extend(parse_iterations(lines.getvalue()))


@contextlib.contextmanager
def offline_llm(model_dir: str | Path, *, quiet: bool = True, **settings):
    """A ``vllm.LLM`` for ``model_dir`` running in this process (settings: see ``llm_settings``), shut down when the
    ``with`` block ends. quiet: vLLM logs errors only (its CPU worker otherwise warns at every request that it will
    not change torch's thread count), draws no bar while it loads the weights and hides its FutureWarnings."""
    with _classes_restored_afterwards(), _engine_in_this_process(model_dir, quiet, settings) as llm:
        yield llm


@contextlib.contextmanager
def _engine_in_this_process(model_dir: str | Path, quiet: bool, settings: dict):
    """offline_llm's engine; on the way out, this process's threads and environment as they were before."""
    import vllm.envs as vllm_envs
    from vllm import LLM  # 5-25 s the first time in a process
    from vllm.config import LoggingConfig

    kwargs = llm_settings(model_dir, **settings)
    quiet_steps = quiet and kwargs["enable_logging_iteration_details"]
    if quiet_steps:  # vLLM's logging left as _info_kept_errors_shown sets it (vLLM would set ERROR, below INFO)
        kwargs.update(logging_config=LoggingConfig(configure_logging=False), use_tqdm_on_load=False)
    elif quiet:
        kwargs.update(log_level="ERROR", use_tqdm_on_load=False)
    saved_environment = dict(os.environ)
    saved_threads, saved_set_threads = torch.get_num_threads(), torch.set_num_threads
    os.environ.update(NO_TELEMETRY_ENV, VLLM_ENABLE_V1_MULTIPROCESSING="0")  # the engine core in this process
    if _device() == "cpu":
        os.environ["VLLM_CPU_OMP_THREADS_BIND"] = "nobind"  # "auto" would pin this process (the kernel) to one core
    with _info_kept_errors_shown(quiet_steps):  # from the engine's start to its shutdown
        llm = None
        try:
            try:
                with warnings.catch_warnings():
                    if quiet:  # vLLM's deprecation warnings (torch.distributed.reduce_op): nothing a learner can change
                        warnings.filterwarnings("ignore", category=FutureWarning, module=r"vllm\.")
                    llm = LLM(**kwargs)
            finally:  # read at start-up only: a server started later gets this process's own environment again
                os.environ.clear()
                os.environ.update(saved_environment)
            yield llm
        finally:
            if llm is not None:
                llm.llm_engine.engine_core.shutdown()  # frees the KV cache, ends torch.distributed, undoes gc.freeze()
            vllm_envs.disable_envs_cache()  # the engine froze vLLM's reading of the environment at start-up: thaw it
            torch.set_num_threads = saved_set_threads
            torch.set_num_threads(saved_threads)
            del llm
            gc.collect()


@contextlib.contextmanager
def _info_kept_errors_shown(active: bool):
    """vLLM logging at INFO with its own handlers showing errors only, while the block runs (when ``active``). vLLM
    writes each engine step's line only if it logs INFO when the engine starts; iterations_logged() reads those lines
    from their logger, while a quiet engine shows nothing else."""
    vllm_logger = logging.getLogger("vllm")
    saved = vllm_logger.level, [(handler, handler.level) for handler in vllm_logger.handlers]
    if active:
        vllm_logger.setLevel(logging.INFO)
        for handler, _ in saved[1]:
            handler.setLevel(logging.ERROR)
    try:
        yield
    finally:
        vllm_logger.setLevel(saved[0])
        for handler, level in saved[1]:
            handler.setLevel(level)


@contextlib.contextmanager
def _classes_restored_afterwards():
    """Every class vLLM decorates for torch.compile while the block runs is put back as it was when it ends.

    vLLM's Transformers backend calls ``support_torch_compile`` on the transformers classes of the model it loads
    (``LlamaModel``, ``CLIPVisionModel``...): it adds a base class and replaces ``__init__`` (which then asks for the
    running engine's config) and ``__call__``. In a server's process that lasts as long as the engine; here it
    would outlive it."""
    from vllm.compilation import decorators

    decorate = decorators._support_torch_compile
    before: list[tuple[type, tuple[type, ...], dict]] = []

    def remember_then_decorate(cls, *args, **kwargs):
        before.append((cls, cls.__bases__, dict(vars(cls))))
        return decorate(cls, *args, **kwargs)

    decorators._support_torch_compile = remember_then_decorate
    try:
        yield
    finally:
        decorators._support_torch_compile = decorate
        for cls, bases, attributes in reversed(before):
            for name in set(vars(cls)) - set(attributes):
                delattr(cls, name)
            for name, value in attributes.items():
                if vars(cls).get(name) is not value:
                    setattr(cls, name, value)
            cls.__bases__ = bases
