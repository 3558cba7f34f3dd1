"""``tinyformer doctor LOGFILE``: read a pasted vLLM GPU start-up log (or a ``vllm serve`` / ``docker run ...
vllm/vllm-openai`` command line), recover its settings, predict the start-up with
:func:`tinyformer.memory.startup.predict_startup`, print predicted vs logged term by term, name the term that
decides the outcome and the cheapest change that makes it start.

Settings come from the log's own lines (the version line, ``non-default args: {...}``, ``Initializing ... with
config: ...``, the memory lines, the fused-MoE config path that names the GPU); a command line is read with
vLLM's own argument parser when vLLM is installed (its CPU wheel is enough), else with a small fallback for
the flags that size memory. The model's config.json comes from ``--config``, or from the shipped logs' models
when the log names one of them (``--model`` names it when the log does not).
"""

from __future__ import annotations

import ast
import contextlib
import io
import json
import re
import shlex
from functools import cache
from pathlib import Path

from tinyformer import vllm_rules
from tinyformer.command import Command
from tinyformer.memory import startup
from tinyformer.memory.architecture import Architecture

# ----- what the log says ----------------------------------------------------------------------------------------

_NUMBER = r"(-?\d+(?:\.\d+)?)"
_LOGGED_PATTERNS = {
    "model_weights_gib": (rf"Loading model weights took {_NUMBER} GB", rf"Model loading took {_NUMBER} GiB"),
    "non_torch_gib": (rf"non_torch_memory takes {_NUMBER}\s*GiB",),
    "activation_peak_gib": (rf"activation peak memory takes {_NUMBER}\s*GiB",),
    "kv_cache_gib": (rf"reserved for KV Cache is {_NUMBER}\s*GiB", rf"Available KV cache memory: {_NUMBER} GiB"),
    "cuda_graph_gib": (rf"Graph capturing finished in \d+ secs?, took {_NUMBER} GiB",),
}
_SETTING_PATTERNS = {
    "vllm_version": (r"vLLM API server version (\S+)", r"engine \(v([^)]+)\) with config"),
    "gpu_total_gib": (rf"total_gpu_memory \({_NUMBER}GiB\)", rf"has a total capacity of {_NUMBER} GiB"),
    "gpu_memory_utilization": (rf"gpu_memory_utilization \({_NUMBER}\)",),
    "max_model_len": (r"max_seq_len=(\d+)", r"Maximum concurrency for ([\d,]+) tokens", r"max seq len \((\d+)\)"),
    "tp": (r"tensor_parallel_size=(\d+)",),
    "pp": (r"pipeline_parallel_size=(\d+)",),
    "dtype": (r"dtype=torch\.(\w+)",),
    "quantization": (r"quantization=(\w+)",),
    "enforce_eager": (r"enforce_eager=(True|False)",),
    "kv_cache_dtype": (r"kv_cache_dtype=(\w+)",),
    "max_num_batched_tokens": (r"Chunked prefill is enabled with max_num_batched_tokens=(\d+)",),
    "model": (r"model='([^']+)'",),
}
_ARG_NAMES = {  # vLLM's argument names (non-default args, the command line) -> the case's keys
    "model": "model", "model_tag": "model", "tensor_parallel_size": "tp", "pipeline_parallel_size": "pp",
    "gpu_memory_utilization": "gpu_memory_utilization", "max_model_len": "max_model_len", "dtype": "dtype",
    "quantization": "quantization", "kv_cache_dtype": "kv_cache_dtype", "max_num_seqs": "max_num_seqs",
    "max_num_batched_tokens": "max_num_batched_tokens", "enforce_eager": "enforce_eager",
    "block_size": "block_size", "enable_chunked_prefill": "enable_chunked_prefill", "enable_lora": "enable_lora",
    "disable_custom_all_reduce": "disable_custom_all_reduce",
}  # fmt: skip
_VLLM_MARKERS = ("vllm", "KV cache", "GPU blocks", "cuda blocks", "CUDA blocks", "model weights take")


def _first(patterns, text):
    for pattern in patterns:
        found = re.search(pattern, text)
        if found:
            return found.group(1)
    return None


def logged_values(text: str) -> dict:
    """The memory terms a log prints, and its outcome (what :func:`startup.logged_terms` reads from a record)."""
    out = {}
    profiles = [line for line in text.splitlines() if "reserved for KV Cache is" in line]
    if len(profiles) > 1:  # several ranks: the one with the least KV cache decides the blocks
        binding = min(profiles, key=lambda line: float(_first(_LOGGED_PATTERNS["kv_cache_gib"], line)))
        text = "\n".join([binding] + [line for line in text.splitlines() if line not in profiles])
    for term, patterns in _LOGGED_PATTERNS.items():
        value = _first(patterns, text)
        if value is not None:
            out[term] = float(value)
    blocks = _first((r"# (?:GPU|CUDA|cuda) blocks: (\d+)",), text)
    tokens = _first((r"GPU KV cache size: ([\d,]+) tokens", r"stored in KV cache \((\d+)\)"), text)
    if tokens is not None:
        out["kv_cache_tokens"] = int(tokens.replace(",", ""))
    elif blocks is not None:
        out["gpu_blocks"] = int(blocks)
    return out


def _convert(key: str, value):
    if key in ("tp", "pp", "max_model_len", "max_num_seqs", "max_num_batched_tokens", "block_size"):
        return int(str(value).replace(",", ""))
    if key in ("gpu_total_gib", "gpu_memory_utilization"):
        return float(value)
    if key in ("enforce_eager", "enable_chunked_prefill", "enable_lora", "disable_custom_all_reduce"):
        return value if isinstance(value, bool) else value == "True"
    if key in ("quantization",) and value == "None":
        return None
    return value


def settings_from_log(text: str) -> dict:
    """The settings a log's lines state (later, more specific lines win over earlier ones)."""
    found = {}
    for key, patterns in _SETTING_PATTERNS.items():
        value = _first(patterns, text)
        if value is not None:
            found[key] = _convert(key, value)
    args = re.search(r"non-default args: (\{.*\})", text)
    if args:
        try:
            given = ast.literal_eval(args.group(1))
        except (ValueError, SyntaxError):  # a truncated paste: keep what the other lines say
            given = {}
        found |= {_ARG_NAMES[k]: _convert(_ARG_NAMES[k], v) for k, v in given.items() if k in _ARG_NAMES}
    device = re.search(r"device_name=([A-Za-z0-9_\-]+)\.json", text)
    if device:
        found["gpu"] = device.group(1).replace("_", " ")
    command = _command_line(text)
    if command:
        found = settings_from_command(command) | found
    return found | _engine_from_format(text, found)


# Lines only one engine prints: the log itself says which engine ran, even without a version line.
_V0_LINES = ("worker.py", "# GPU blocks", "# CUDA blocks", "# cuda blocks", "model_runner.py:", "Loading model weights")
_V1_LINES = ("gpu_model_runner.py", "Available KV cache memory", "GPU KV cache size", "EngineCore")


def _engine_from_format(text: str, found: dict) -> dict:
    """The engine the log's own lines show (as VLLM_USE_V1), and a release of that format when none is named:
    0.8.0 for V0 lines in brackets ("[worker.py:267]"), 0.7.0 for older V0 lines, 0.11.0 for V1."""
    env = dict(found.get("env") or {})
    out = {}
    if any(marker in text for marker in _V1_LINES):
        env["VLLM_USE_V1"] = "1"
        guess = "0.11.0"
    elif any(marker in text for marker in _V0_LINES):
        env["VLLM_USE_V1"] = "0"
        guess = "0.8.0" if re.search(r"\[\w+\.py:\d+\]", text) else "0.7.0"
    else:
        return {}
    out["env"] = env
    if "vllm_version" not in found:
        out["vllm_version"] = f"{guess} (guessed from the log's format)"
    return out


def _command_line(text: str) -> list[str] | None:
    for line in text.splitlines():
        line = line.strip().lstrip("+$ ").strip()
        if re.search(r"(vllm serve|vllm\.entrypoints\.\S+|vllm/vllm-openai)", line):
            try:
                return shlex.split(line)
            except ValueError:
                return None
    return None


def settings_from_command(words: list[str]) -> dict:
    """Settings of a ``vllm serve MODEL ...``, ``python -m vllm.entrypoints...`` or ``docker run ...
    vllm/vllm-openai[:tag] ...`` command, parsed with vLLM's own argument parser when it is installed."""
    version = None
    env = dict(w.split("=", 1) for w in words if re.match(r"[A-Z_][A-Z0-9_]*=", w))
    for i, word in enumerate(words):
        if word.startswith("vllm/vllm-openai"):
            tag = word.partition(":")[2].lstrip("v")
            version = tag if re.match(r"\d+\.\d+", tag) else None
            words = words[i + 1 :]
            break
        if word == "serve" and i and words[i - 1].endswith("vllm"):
            words = words[i + 1 :]  # the model is a positional argument anywhere after "serve"
            break
        if word.startswith("vllm.entrypoints"):
            words = words[i + 1 :]
            break
    env |= dict(w.split("=", 1) for w in words if re.match(r"[A-Z_][A-Z0-9_]*=", w))
    words = [w for w in words if not re.match(r"[A-Z_][A-Z0-9_]*=", w)]
    parsed = _parse_with_vllm(words) or _parse_fallback(words)
    out = {_ARG_NAMES[k]: _convert(_ARG_NAMES[k], v) for k, v in parsed.items() if k in _ARG_NAMES and v is not None}
    if env:
        out["env"] = env
    if version:
        out["vllm_version"] = version
    return {k: v for k, v in out.items() if not (k in ("enforce_eager", "enable_lora") and v is False)}


def _parse_with_vllm(words: list[str]) -> dict | None:
    """The flags a command sets explicitly, read by the installed vLLM's own parser (its defaults are its
    release's, so only values that differ from them are kept); None when vLLM can't be imported or refuses."""
    parser = _vllm_parser()
    if parser is None:
        return None
    try:
        with contextlib.redirect_stderr(io.StringIO()):  # argparse prints its usage before giving up
            given = vars(parser.parse_args(words))
    except SystemExit:  # a flag this vLLM release does not know: the fallback reads the rest
        return None
    defaults = vars(parser.parse_args([]))
    return {key: value for key, value in given.items() if value != defaults.get(key)}


@cache
def _vllm_parser():
    try:
        import vllm  # noqa: F401  (imports vLLM's config machinery in the order it expects)
        from vllm.entrypoints.launchers.cli_args import make_arg_parser
        from vllm.utils.argparse_utils import FlexibleArgumentParser
    except Exception:  # vLLM absent or another release's layout: the fallback reads the memory flags
        return None
    return make_arg_parser(FlexibleArgumentParser(prog="vllm serve"))


def _parse_fallback(words: list[str]) -> dict:
    out, i = {}, 0
    while i < len(words):
        word = words[i]
        if word.startswith("-"):
            name, _, value = word.lstrip("-").partition("=")
            name = {"tp": "tensor_parallel_size", "pp": "pipeline_parallel_size"}.get(name, name.replace("-", "_"))
            if not value and i + 1 < len(words) and not words[i + 1].startswith("-"):
                value, i = words[i + 1], i + 1
            out[name] = value.strip("\"'") if value else "True"
        elif "model" not in out:
            out["model"] = word
        i += 1
    return out


# ----- the model's config ----------------------------------------------------------------------------------------


def _model_key(name: str) -> str:
    return Path(startup._clean(name).rstrip("/")).name.lower()


def known_config(model: str | None) -> dict | None:
    """The config.json of a model the shipped logs cover, matched by its name (the path's last part)."""
    if not model:
        return None
    for case in startup.cases() + startup.seed_cases():
        if _model_key(case["model"]) == _model_key(model):
            return case["config"]
    return None


# ----- the diagnosis ---------------------------------------------------------------------------------------------


def read_log(path) -> str:
    text = Path(path).read_text(errors="replace")
    if not any(marker in text for marker in _VLLM_MARKERS):
        raise ValueError(
            f"{path} does not look like a vLLM start-up log or command: no vLLM line in it (paste the server's "
            "output from 'vLLM API server version' to the error, or the vllm serve / docker run command)."
        )
    return text


def case_from_log(
    text: str,
    *,
    gpu: str | None = None,
    model: str | None = None,
    config: dict | None = None,
    vllm_version: str | None = None,
) -> dict:
    """A case (predict_startup's settings) recovered from a log; raises ValueError naming what is missing."""
    settings = settings_from_log(text)
    if gpu:
        settings["gpu"] = gpu
    if model:
        settings["model"] = model
    if vllm_version:
        vllm_rules.parse_version(vllm_version)  # refuses a malformed one before any work
        settings["vllm_version"] = vllm_version
    config = config or known_config(settings.get("model"))
    if config is None:
        raise ValueError(
            f"no config.json for model {settings.get('model')!r}: pass --config PATH (the model's config.json)"
            + ("" if settings.get("model") else " or --model NAME (the log does not name the model)")
            + "."
        )
    if not settings.get("gpu") and not settings.get("gpu_total_gib"):
        raise ValueError("the log names no GPU and prints no total_gpu_memory: pass --gpu NAME (e.g. 'RTX 3090').")
    return settings | {"config": config}


def deciding_term(prediction: startup.StartupPrediction) -> str:
    """The term that decides the outcome, in words."""
    p = prediction
    if p.outcome == "oom":
        return f"model weights ({p.model_weights_gib:.2f} GiB) + activation peak: more than the card holds"
    if p.outcome == "starts":
        return f"nothing fails: {p.kv_cache_tokens:,} KV tokens >= max_model_len {p.max_model_len:,}"
    parts = {k: v for k, v in p.terms.items() if k in ("decoder", "sampler", "vision")}
    biggest = max(parts, key=parts.get)
    reasons = {
        "decoder": f"the profiling batch of {p.max_num_batched_tokens:,} tokens"
        + (" (= max_model_len: chunked prefill is off)" if not p.chunked_prefill else ""),
        "sampler": f"the sampler on {p.max_num_seqs} dummy sequences (max_num_seqs)",
        "vision": f"the vision encoder on {p.images_profiled} maximal dummy images",
    }
    if p.activation_peak_gib > max(p.kv_cache_gib, 0) or p.outcome == "no_kv_memory":
        return f"activation peak {p.activation_peak_gib:.2f} GiB from {reasons[biggest]}"
    kv = f"the KV cache: {p.kv_cache_tokens:,} tokens left, max_model_len {p.max_model_len:,} needs more"
    if not p.chunked_prefill:  # the peak that left too little was sized by max_model_len itself
        return f"{kv}, after an activation peak of {p.activation_peak_gib:.2f} GiB from {reasons[biggest]}"
    return kv


def _starts(case: dict) -> startup.StartupPrediction | None:
    prediction = startup.predict_startup(case)
    return prediction if prediction.outcome == "starts" else None


def cheapest_fix(case: dict) -> tuple[str, startup.StartupPrediction] | None:
    """The cheapest change that makes the start-up work, checked by predicting it; None if none in reach.

    Tried in order of cost: chunked prefill (free when the profiling batch is max_model_len tokens), a
    gpu_memory_utilization of 0.95, fewer sequences at once, an fp8 KV cache, the longest max_model_len that
    starts (only where a shorter one helps), twice the GPUs.
    """
    p = startup.predict_startup(case)
    if p.outcome == "starts":
        return None
    tries = []
    arch = Architecture(case["config"])
    can_chunk = vllm_rules.v0_chunked_prefill_supported(
        multimodal=arch.vision is not None, mla=arch.mla, sliding_window=bool(arch.get("sliding_window"))
    )
    if p.engine == "V0" and not p.chunked_prefill and can_chunk:
        tries.append(("--enable-chunked-prefill (profiling batch 2048 tokens instead of max_model_len)",
                      {"enable_chunked_prefill": True}))  # fmt: skip
    if p.gpu_memory_utilization < 0.95:
        tries.append(("--gpu-memory-utilization 0.95", {"gpu_memory_utilization": 0.95}))
    for seqs in (128, 64, 32, 16, 8):
        if seqs < p.max_num_seqs:
            tries.append((f"--max-num-seqs {seqs}", {"max_num_seqs": seqs}))
    tries.append(("--kv-cache-dtype fp8", {"kv_cache_dtype": "fp8"}))
    for name, change in tries:
        fixed = _starts(case | change)
        if fixed:
            return name, fixed
    shorter = _longest_max_model_len(case, p.max_model_len)
    if shorter:
        return f"--max-model-len {shorter.max_model_len}", shorter
    for tp in (2, 4, 8):
        if tp > int(case.get("tp") or 1):
            fixed = _starts(case | {"tp": tp})
            if fixed:
                return f"--tensor-parallel-size {tp}", fixed
    return None


def _longest_max_model_len(case: dict, below: int) -> startup.StartupPrediction | None:
    """The largest max_model_len under ``below`` that starts (binary search in whole blocks), or None."""
    best, low, high = None, 1, (below - 1) // 16
    while low <= high:
        mid = (low + high) // 2
        fixed = _starts(case | {"max_model_len": mid * 16})
        if fixed:
            best, low = fixed, mid + 1
        else:
            high = mid - 1
    return best


def report(text: str, **overrides) -> str:
    """The doctor's report for a log's text."""
    case = case_from_log(text, **overrides)
    prediction = startup.predict_startup(case)
    logged = logged_values(text)
    if "gpu_blocks" in logged:
        logged["kv_cache_tokens"] = logged.pop("gpu_blocks") * prediction.block_size
    rows = [
        f"settings: {startup._clean(str(case.get('model')))} on {prediction.terms['card']}, vLLM "
        f"{'.'.join(map(str, prediction.version))} ({prediction.engine}), tp {case.get('tp') or 1}, "
        f"max_model_len {prediction.max_model_len:,}, profiling batch {prediction.max_num_batched_tokens:,} tokens "
        f"/ {prediction.max_num_seqs} sequences, chunked prefill {'on' if prediction.chunked_prefill else 'off'}",
        f"{'term':22} {'predicted':>12} {'logged':>12}",
    ]
    for term in startup.TERMS:
        value, seen = getattr(prediction, term), logged.get(term)
        fmt = "{:,.0f}" if term == "kv_cache_tokens" else "{:.2f}"
        shown = ["-" if x is None else fmt.format(x) for x in (value, seen)]
        rows.append(f"{term:22} {shown[0]:>12} {shown[1]:>12}")
    rows.append(f"outcome: {prediction.outcome}")
    if prediction.engine == "V0" and prediction.version < vllm_rules.FREE_MEMORY_PROFILING_BEFORE:
        rows.append(
            "note: this release counts the allocator's cached blocks in its profiling peak (free-memory drop), "
            "priced as the allocated peak times a factor fitted to one such log (free_memory_drop_factor)"
        )
    rows.append(f"deciding term: {deciding_term(prediction)}")
    fix = cheapest_fix(case)
    if prediction.outcome != "starts":
        rows.append(
            f"cheapest fix: {fix[0]} -> {fix[1].kv_cache_tokens:,} KV tokens" if fix else "cheapest fix: none in reach"
        )
    rows += ["vLLM would print:"] + [f"  {line}" for line in prediction.log_lines()]
    return "\n".join(rows)


def _arguments(parser) -> None:
    parser.add_argument("logfile", help="a pasted vLLM start-up log, or a file with a vllm serve / docker run command")
    parser.add_argument("--gpu", help="the GPU when the log does not name it, e.g. 'RTX 3090', 'H100', 'A10G'")
    parser.add_argument("--model", help="the model when the log does not name it (one of the shipped logs' models)")
    parser.add_argument("--config", help="the model's config.json (needed for models the shipped logs do not cover)")
    parser.add_argument("--vllm-version", help="the vLLM release when the log has no version line, e.g. 0.6.1")


def _run(args) -> int:
    text = read_log(args.logfile)
    config = json.loads(Path(args.config).read_text()) if args.config else None
    print(report(text, gpu=args.gpu, model=args.model, config=config, vllm_version=args.vllm_version))
    return 0


def _command() -> Command:
    return Command(
        name="doctor",
        summary="explain a vLLM GPU start-up log: predicted vs logged memory, the deciding term, the cheapest fix",
        description=__doc__.split("\n\n")[0],
        add_arguments=_arguments,
        run=_run,
        epilog="examples:\n  tinyformer doctor startup.log\n  tinyformer doctor serve-command.txt --gpu 'RTX 3090'",
    )


COMMAND = _command()
__all__ = ["COMMAND", "case_from_log", "cheapest_fix", "deciding_term", "logged_values", "report"]
