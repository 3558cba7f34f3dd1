"""The GPU serving planner: what vLLM will do with a real model on a real GPU (or on the CPU backend).

:func:`plan_serving` prices the weights (:mod:`~tinyformer.memory.catalogue`), estimates what vLLM measures
at start-up (activation peak, framework overhead), and hands the KV budget left to vLLM's rules
(:mod:`tinyformer.vllm_rules`: whole blocks, the null block, the refusals and the capacity line).
:func:`fixes` tries the changes that make a failing configuration start, cheapest first.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from tinyformer import vllm_rules
from tinyformer.memory.catalogue import GPU, QUANTISED, ModelSpec, find_model, gpus, lookup, model_weight_bytes
from tinyformer.memory.formulas import DTYPE_BYTES, GiB, dtype_bytes, dtype_name, format_bytes, positive
from tinyformer.memory.vision import profile_images, vision_activation_bytes
from tinyformer.vllm_rules import KVCapacity

# The checkpoint a quantised row of the calculator stands for: files written quantised, config included.
QUANTISED_FORMATS = {"fp8": "e.g. an FP8 checkpoint", "int8": "e.g. a W8A8 checkpoint", "int4": "e.g. AWQ or GPTQ"}

# What vLLM measures at start-up and we can only estimate (documented assumptions, from public vLLM
# start-up logs: e.g. Llama-3-8B on an H100 logged 1.79 GiB "non_torch_memory" and 1.26 GiB
# "PyTorch activation peak memory"). CUDA context, cuBLAS/NCCL workspaces and CUDA graphs:
FRAMEWORK_OVERHEAD_BYTES = 2 * GiB
FRAMEWORK_OVERHEAD_TP_BYTES = 3 * GiB  # with tensor parallelism: NCCL buffers on every GPU
MAX_GPU_MEMORY_UTILIZATION = 0.95  # above this vLLM tends to run out of memory during CUDA graph capture


@dataclass(frozen=True)
class Engine:
    """How a vLLM generation measures the start-up peak it subtracts from the usable memory."""

    activation_factor: float  # measured activation peak / serving_activation_bytes
    overhead: int
    overhead_tp: int
    overhead_means: str


# vLLM <= 0.6 (the V0 engine) ran the profiling pass in eager PyTorch and read the peak from the GPU's free
# memory, so allocator slack and unfused temporaries (rotary-embedding copies, ...) count; CUDA graphs were
# captured only after the KV cache was sized ("CUDA graphs can take additional 1~3 GiB"). The factor is fitted
# to the Phi-3.5-vision log (case phi35v-a10g-30000 in reference/vlm_models.json); the other cases check it.
# V0 overhead: none on one GPU (the CUDA context exists before vLLM takes its baseline); 0.5 GiB of NCCL
# buffers per GPU with tensor parallelism is a guess that no cited log checks.
V0_ACTIVATION_FACTOR = 1.45
V0_MAX_NUM_SEQS = vllm_rules.V0_MAX_NUM_SEQS
ENGINES = {
    "v1": Engine(1.0, FRAMEWORK_OVERHEAD_BYTES, FRAMEWORK_OVERHEAD_TP_BYTES, "CUDA context, workspaces, CUDA graphs"),
    "v0": Engine(V0_ACTIVATION_FACTOR, 0, GiB // 2, "non-torch allocations; CUDA graphs come after KV sizing"),
}


def batch_limits(
    gpu: GPU,
    engine: str,
    max_model_len: int,
    max_num_batched_tokens: int | None,
    max_num_seqs: int | None,
    multimodal: bool = False,
) -> tuple[int, int]:
    """The (tokens, sequences) of vLLM's profiling batch: as asked, else the engine's defaults.

    V1: :func:`default_batch_limits` (chunked prefill). V0: vLLM's own rule (:func:`vllm_rules.profiling_batch`):
    without chunked prefill one whole prompt must fit a batch, so max(max_model_len, 2048) tokens (5120 at least
    for a multimodal model), 256 sequences; a text model above 32K tokens gets chunked prefill and 2048.
    """
    if engine == "v0":
        chunked = vllm_rules.chunked_prefill_on("V0", max_model_len, multimodal=multimodal)
        return vllm_rules.profiling_batch(
            "V0",
            max_model_len,
            chunked,
            gpu_memory_gib=gpu.memory_bytes / GiB,
            gpu_name=gpu.name,
            multimodal=multimodal,
            max_num_batched_tokens=max_num_batched_tokens,
            max_num_seqs=max_num_seqs,
            version=(0, 6, 1),  # the V0 logs of reference/vlm_models.json: vLLM 0.6.1 to 0.6.x
        )
    tokens, seqs = default_batch_limits(gpu)
    return max_num_batched_tokens or tokens, max_num_seqs or seqs


def default_batch_limits(gpu: GPU) -> tuple[int, int]:
    """vLLM's defaults for the OpenAI server: (max_num_batched_tokens, max_num_seqs), by GPU memory."""
    if gpu.memory_bytes >= 160 * GiB:
        return 16384, 1024
    if gpu.memory_bytes >= 70 * GiB and "A100" not in gpu.name:
        return 8192, 1024
    return 2048, 256


def serving_activation_bytes(
    spec: ModelSpec, max_num_batched_tokens: int, max_num_seqs: int, act_dtype="bf16", tensor_parallel_size: int = 1
) -> int:
    """Estimate of the activation peak vLLM's profiling forward pass reaches (per GPU).

    vLLM runs ``max_num_batched_tokens`` dummy tokens through the model and measures the peak. The largest
    transient tensors are the MLP's: [tokens, 2 x intermediate] (gate and up) and [tokens, intermediate],
    plus a few [tokens, hidden] residual tensors; then the sampler's fp32 logits [max_num_seqs, vocab].
    """
    inter = spec.intermediate_size // tensor_parallel_size
    per_token = (2 * inter if spec.mlp == "gated" else inter) + inter + 4 * spec.hidden_size
    mlp = max_num_batched_tokens * per_token * dtype_bytes(act_dtype)
    logits = max_num_seqs * spec.vocab_size * 4
    return math.ceil(mlp + logits)


@dataclass(frozen=True)
class ServingPlan:
    """What vLLM would do with one configuration (all byte counts per GPU / per worker)."""

    model: ModelSpec
    device: str  # "GPU" or "CPU", as vLLM's log line names it
    gpu: GPU | None
    dtype: str
    kv_dtype: str
    gpu_memory_utilization: float
    max_model_len: int
    tensor_parallel_size: int
    cpu_offload_gb: float
    block_size: int
    weights: int  # whole model
    weights_on_gpu: int  # per GPU, after tensor parallelism and CPU offload
    offloaded: int  # per GPU, kept in CPU memory and streamed in every forward pass
    activations: int
    overhead: int
    usable: int  # total x gpu_memory_utilization (or the KV bytes given on CPU)
    kv_budget: int
    bytes_per_token: int
    capacity: KVCapacity | None
    status: str  # "ok" or what stops vLLM
    message: str  # vLLM's line: the KV cache size, or the error it raises
    assumptions: tuple[str, ...] = field(default=())
    engine: str = "v1"  # how vLLM profiles (ENGINES)
    max_num_batched_tokens: int | None = None  # as asked (None: vLLM's default)
    max_num_seqs: int | None = None
    limit_mm_per_prompt: int = 1
    images_profiled: int = 0  # maximal dummy images in the profiling run

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def offload_seconds_per_step(self) -> float:
        """Time to stream the offloaded weights over PCIe once: added to every forward pass."""
        if not self.offloaded or self.gpu is None:
            return 0.0
        return self.offloaded / (self.gpu.host_link_gb_s * 1e9)

    def summary(self) -> str:
        rows = [
            f"{self.model.name} on {self.tensor_parallel_size} x {self.gpu.name if self.gpu else 'CPU'}, "
            f"{self.dtype} weights, KV in {self.kv_dtype}, max_model_len {self.max_model_len:,}",
            f"  weights            {format_bytes(self.weights_on_gpu):>10} per GPU"
            + (f" (+{format_bytes(self.offloaded)} offloaded to CPU)" if self.offloaded else ""),
            f"  activations (est.) {format_bytes(self.activations):>10}",
            f"  overhead (est.)    {format_bytes(self.overhead):>10}",
            f"  KV budget          {format_bytes(max(self.kv_budget, 0)):>10} ({self.bytes_per_token:,} B per token)",
            f"  -> {self.message}",
        ]
        return "\n".join(rows)


def plan_serving(
    model: ModelSpec | str,
    gpu: GPU | str | None = None,
    *,
    dtype="bf16",
    gpu_memory_utilization: float = 0.9,
    max_model_len: int | None = None,
    tensor_parallel_size: int = 1,
    cpu_offload_gb: float = 0.0,
    kv_cache_dtype="auto",
    kv_cache_memory_bytes: int | None = None,
    max_num_batched_tokens: int | None = None,
    max_num_seqs: int | None = None,
    limit_mm_per_prompt: int = 1,
    engine: str = "v1",
) -> ServingPlan:
    """Predict what vLLM logs (or the error it raises) for ``model`` served on ``gpu``.

    GPU: usable = total memory x gpu_memory_utilization; KV budget = usable - weights per GPU (after
    tensor parallelism and ``cpu_offload_gb``) - activation peak (estimated) - framework overhead
    (estimated); tokens from whole blocks of 16. With ``gpu=None`` (vLLM's CPU backend) the KV budget is
    ``kv_cache_memory_bytes`` exactly, blocks hold 128 tokens, and the prediction is exact.
    ``kv_cache_memory_bytes`` on a GPU likewise replaces the estimate (vLLM then skips profiling).

    A model is a spec, a Hugging Face id or a table name (:func:`~tinyformer.memory.catalogue.find_model`).
    A vision-language model (e.g. ``"microsoft/Phi-3.5-vision-instruct"``) adds its vision encoder's weights
    and, to the profiling peak, the maximal dummy images vLLM runs through it
    (:func:`~tinyformer.memory.vision.profile_images`). When weights plus that peak exceed the card, vLLM
    dies with an out-of-memory error during profiling (status ``profile_oom``). ``engine="v0"`` models how
    vLLM <= 0.6 profiled (the public logs of ``reference/vlm_models.json``): see :data:`ENGINES`.
    """
    spec = find_model(model) if isinstance(model, str) else model
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}; choose one of {sorted(ENGINES)}.")
    positive(limit_mm_per_prompt=limit_mm_per_prompt)
    card = lookup(gpus(), gpu, "GPU") if isinstance(gpu, str) else gpu
    dtype = dtype_name(dtype)
    tp = tensor_parallel_size
    positive(tensor_parallel_size=tp)
    max_model_len = spec.max_position_embeddings if max_model_len is None else max_model_len
    positive(max_model_len=max_model_len)
    if not 0 < gpu_memory_utilization <= 1:
        raise ValueError(f"gpu_memory_utilization must be in (0, 1], got {gpu_memory_utilization}.")
    if cpu_offload_gb < 0:
        raise ValueError(f"cpu_offload_gb must be >= 0, got {cpu_offload_gb}.")

    act_dtype = "fp32" if dtype == "fp32" else ("bf16" if card is None or card.supports_bf16 else "fp16")
    if dtype == "fp16":
        act_dtype = "fp16"
    kv_dtype = act_dtype if kv_cache_dtype == "auto" else dtype_name(kv_cache_dtype)
    weights = model_weight_bytes(spec, dtype)
    per_gpu = -(-weights // tp)
    offloaded = min(per_gpu, int(cpu_offload_gb * GiB))
    weights_on_gpu = per_gpu - offloaded
    bytes_per_token = spec.kv_bytes_per_token(kv_dtype, tp)
    assumptions: list[str] = []
    images = 0

    if card is None:
        if kv_cache_memory_bytes is None:
            raise ValueError("on the CPU backend pass kv_cache_memory_bytes (vLLM's --kv-cache-memory-bytes).")
        block_size, device = vllm_rules.CPU_BLOCK_SIZE, "CPU"
        activations = overhead = 0
        usable = kv_budget = int(kv_cache_memory_bytes)
    else:
        block_size, device = vllm_rules.GPU_BLOCK_SIZE, "GPU"
        usable = int(card.memory_bytes * gpu_memory_utilization)
        if kv_cache_memory_bytes is not None:
            activations = overhead = 0
            kv_budget = int(kv_cache_memory_bytes)
        else:
            tokens, seqs = batch_limits(
                card, engine, max_model_len, max_num_batched_tokens, max_num_seqs, spec.vision is not None
            )
            activations = math.ceil(
                serving_activation_bytes(spec, tokens, seqs, act_dtype, tp) * ENGINES[engine].activation_factor
            )
            if spec.vision is not None:
                images = profile_images(spec.vision, tokens, seqs, limit_mm_per_prompt)
                per_image = vision_activation_bytes(
                    spec.vision, spec.hidden_size, spec.n_kv_heads * spec.head_dim, dtype_bytes(act_dtype)
                )
                activations += images * per_image
            overhead = ENGINES[engine].overhead_tp if tp > 1 else ENGINES[engine].overhead
            kv_budget = usable - weights_on_gpu - activations - overhead
            assumptions = [
                f"activation peak estimated for {tokens:,} batched tokens and {seqs:,} sequences"
                + (f" with {images:,} maximal dummy images" if spec.vision is not None else "")
                + " (vLLM measures it at start-up)",
                f"framework overhead ({ENGINES[engine].overhead_means}) assumed {format_bytes(overhead)}",
            ]

    common = dict(
        model=spec,
        device=device,
        gpu=card,
        dtype=dtype,
        kv_dtype=kv_dtype,
        gpu_memory_utilization=gpu_memory_utilization,
        max_model_len=max_model_len,
        tensor_parallel_size=tp,
        cpu_offload_gb=cpu_offload_gb,
        block_size=block_size,
        weights=weights,
        weights_on_gpu=weights_on_gpu,
        offloaded=offloaded,
        activations=activations,
        overhead=overhead,
        usable=usable,
        kv_budget=kv_budget,
        bytes_per_token=bytes_per_token,
        assumptions=tuple(assumptions),
        engine=engine,
        max_num_batched_tokens=max_num_batched_tokens,
        max_num_seqs=max_num_seqs,
        limit_mm_per_prompt=limit_mm_per_prompt,
        images_profiled=images,
    )
    status, message = _vllm_check(
        spec, card, dtype, tp, max_model_len, weights_on_gpu, kv_budget, bytes_per_token, block_size
    )
    # Checked for vision-language models and the V0 logs (text models on V1 keep the KV-budget refusal they
    # had: lesson 06's tables label those statuses; a text model at the card's edge would also crash here).
    if status in ("no_kv_memory", "max_model_len_too_long", "ok") and (spec.vision is not None or engine == "v0"):
        status, message = _profile_check(card, weights_on_gpu, activations, images) or (status, message)
    if status != "ok":
        return ServingPlan(capacity=None, status=status, message=message, **common)
    capacity = vllm_rules.vllm_kv_capacity(kv_budget, bytes_per_token, block_size, max_model_len)
    return ServingPlan(capacity=capacity, status="ok", message=capacity.log_line(device), **common)


def _vllm_check(spec, card, dtype, tp, max_model_len, weights_on_gpu, kv_budget, bytes_per_token, block_size):
    """(status, vLLM's message) for the first check vLLM would fail, in the order vLLM runs them.

    The model-length, tensor-parallel and KV-budget rules are vLLM's own (:mod:`tinyformer.vllm_rules`);
    the dtype and out-of-memory lines are this planner's GPU estimates."""
    refusal = vllm_rules.max_model_len_refusal(max_model_len, spec.max_position_embeddings)
    refusal = refusal or vllm_rules.tensor_parallel_refusal(spec.n_head, tp)
    if refusal:
        return refusal.kind, f"ValueError: {refusal.vllm_says}"
    if card is not None and dtype == "bf16" and not card.supports_bf16:
        return "dtype_unsupported", (
            f"ValueError: Bfloat16 is only supported on GPUs with compute capability of at least 8.0. Your "
            f"{card.name} GPU has compute capability {card.compute_capability}. You can use float16 instead "
            "by explicitly setting the `dtype` flag in CLI, for example: --dtype=half."
        )
    if card is not None and dtype == "fp8" and not card.supports_fp8:
        return "dtype_unsupported", (
            f"ValueError: fp8 weights need compute capability 8.0 or more; the {card.name} has "
            f"{card.compute_capability}. Use int8 or int4 (AWQ/GPTQ) instead."
        )
    if card is not None and weights_on_gpu > card.memory_bytes:
        return "weights_dont_fit", (
            f"torch.OutOfMemoryError: CUDA out of memory while loading the weights: "
            f"{format_bytes(weights_on_gpu)} of weights per GPU, the {card.name} has "
            f"{format_bytes(card.memory_bytes)} in total. (max_model_len does not change this.)"
        )
    refusal = vllm_rules.kv_budget_refusal(max(kv_budget, 0), bytes_per_token, block_size, max_model_len)
    if refusal is None:
        return "ok", ""
    per_request = vllm_rules.bytes_for_tokens(max_model_len, bytes_per_token, block_size)
    fits = vllm_rules.estimated_max_model_len(max(kv_budget, 0), bytes_per_token, block_size, max_model_len)
    if refusal.kind == "no_kv_memory":
        why = (
            "the weights, activations and overhead already use all of the usable memory"
            if kv_budget <= 0
            else (f"no more than the one block of {block_size * bytes_per_token:,} bytes vLLM keeps back")
        )
        return refusal.kind, f"ValueError: {refusal.vllm_says} (KV budget {format_bytes(kv_budget)}: {why}.)"
    return refusal.kind, (
        f"ValueError: {refusal.vllm_says} [In bytes: {per_request:,} needed for one request, {kv_budget:,} "
        f"available less one block of {block_size * bytes_per_token:,} bytes that vLLM keeps back; "
        f"{fits:,} tokens fit.]"
    )


def _profile_check(card, weights_on_gpu, activations, images):
    """vLLM's profiling forward pass needs more than the card's whole memory (not just the utilisation share).

    Only the weights and the activation peak count here: the framework overhead's CUDA graphs are captured
    after profiling, so they shrink the KV budget rather than crash the profiling run.
    """
    peak = weights_on_gpu + activations
    if card is None or peak <= card.memory_bytes:
        return None
    dummies = f", {images:,} maximal dummy images included" if images else ""
    return "profile_oom", (
        "torch.OutOfMemoryError: CUDA out of memory during vLLM's start-up profiling run: weights "
        f"{format_bytes(weights_on_gpu)} + activation peak {format_bytes(activations)}{dummies} = "
        f"{format_bytes(peak)}, the {card.name} has {format_bytes(card.memory_bytes)}."
    )


@dataclass(frozen=True)
class Fix:
    change: str  # what to change, as a flag
    cost: str  # what it costs
    plan: ServingPlan  # the configuration after the change


def _plan_with(plan: ServingPlan, **changes) -> ServingPlan:
    return plan_serving(plan.model, plan.gpu, **(_plan_args(plan) | changes))


def _plan_args(plan: ServingPlan) -> dict:
    """The keyword arguments of plan_serving that made ``plan``."""
    return dict(
        dtype=plan.dtype,
        gpu_memory_utilization=plan.gpu_memory_utilization,
        max_model_len=plan.max_model_len,
        tensor_parallel_size=plan.tensor_parallel_size,
        cpu_offload_gb=plan.cpu_offload_gb,
        kv_cache_dtype="auto" if plan.kv_dtype in ("bf16", "fp16", "fp32") else plan.kv_dtype,
        max_num_batched_tokens=plan.max_num_batched_tokens,
        max_num_seqs=plan.max_num_seqs,
        limit_mm_per_prompt=plan.limit_mm_per_prompt,
        engine=plan.engine,
    )


def _largest_working(plan: ServingPlan, setting: str, below: int, floor: int = 1) -> ServingPlan | None:
    """The plan with the largest value of ``setting`` in [floor, below) that starts, or None.

    A smaller max_model_len or max_num_seqs never needs more memory, so a binary search finds it; and
    when even ``floor`` fails, the setting cannot help and is not suggested.
    """
    best, low, high = None, floor, below - 1
    while low <= high:
        mid = (low + high) // 2
        candidate = _plan_with(plan, **{setting: mid})
        if candidate.ok:
            best, low = candidate, mid + 1
        else:
            high = mid - 1
    return best


def fixes(plan: ServingPlan) -> list[Fix]:
    """Changes that make a failing GPU configuration start, cheapest first.

    Tried in order: a smaller max_model_len (free, when only the KV cache is short, or when the profiling
    batch is max_model_len tokens; it never helps when the weights don't fit), fewer sequences at once
    (a vision-language model's profiling run gives each a maximal image), a higher gpu_memory_utilization,
    an fp8 KV cache, quantised weights (fp8, int8, int4), more GPUs (tensor parallelism), a larger card, and
    CPU offload (slow). Each is kept only if the plan after it starts.
    """
    if plan.ok or plan.gpu is None:
        return []
    found: list[Fix] = []

    def attempt(change: str, cost: str, **changes) -> None:
        try:
            candidate = _plan_with(plan, **changes)
        except ValueError:
            return
        if candidate.ok:
            found.append(Fix(change, cost, candidate))

    if plan.status == "max_model_len_above_model":
        attempt(
            f"--max-model-len {plan.model.max_position_embeddings}",
            "none: the model's own limit",
            max_model_len=plan.model.max_position_embeddings,
        )
    if plan.status == "dtype_unsupported":
        attempt("--dtype float16", "none on this GPU (bf16 and fp16 have the same size)", dtype="fp16")
    if plan.status == "max_model_len_too_long":
        fits = vllm_rules.estimated_max_model_len(
            max(plan.kv_budget, 0), plan.bytes_per_token, plan.block_size, plan.max_model_len
        )
        if fits >= plan.block_size:
            attempt(
                f"--max-model-len {fits}", f"longer requests (over {fits:,} tokens) are refused", max_model_len=fits
            )
    if plan.status == "profile_oom" and plan.max_num_batched_tokens is None:
        shorter = _largest_working(plan, "max_model_len", plan.max_model_len, plan.block_size)
        if shorter is not None:
            n = shorter.max_model_len
            found.append(Fix(f"--max-model-len {n}", f"longer requests (over {n:,} tokens) are refused", shorter))
    if plan.status == "profile_oom" and plan.model.vision is not None:
        multimodal = plan.model.vision is not None
        seqs = plan.max_num_seqs or batch_limits(plan.gpu, plan.engine, plan.max_model_len, None, None, multimodal)[1]
        fewer = _largest_working(plan, "max_num_seqs", seqs)
        if fewer is not None:
            n = fewer.max_num_seqs
            found.append(Fix(f"--max-num-seqs {n}", f"at most {n} requests at once (profiling: {n} images)", fewer))
    if plan.gpu_memory_utilization < MAX_GPU_MEMORY_UTILIZATION:
        attempt(
            f"--gpu-memory-utilization {MAX_GPU_MEMORY_UTILIZATION}",
            "less headroom for other processes",
            gpu_memory_utilization=MAX_GPU_MEMORY_UTILIZATION,
        )
    if plan.status == "max_model_len_too_long" and plan.kv_dtype != "fp8" and plan.gpu.supports_fp8:
        attempt("--kv-cache-dtype fp8", "a little attention accuracy", kv_cache_dtype="fp8")
    for quantised in QUANTISED:
        if DTYPE_BYTES[quantised] < DTYPE_BYTES[plan.dtype]:
            attempt(
                f"an {quantised} checkpoint ({QUANTISED_FORMATS[quantised]}), served as it is",
                "some accuracy; the weights must be quantised first: --quantization alone is not enough "
                "(on a plain checkpoint vLLM stops with 'Cannot find the config file for awq')",
                dtype=quantised,
            )
    for tp in (2, 4, 8):  # the smallest number of GPUs that works
        if tp > plan.tensor_parallel_size:
            before = len(found)
            attempt(
                f"--tensor-parallel-size {tp}",
                f"{tp} GPUs instead of {plan.tensor_parallel_size}",
                tensor_parallel_size=tp,
            )
            if len(found) > before:
                break
    for card in sorted(gpus().values(), key=lambda g: g.memory_bytes):  # the smallest larger card that works
        if card.memory_bytes > plan.gpu.memory_bytes and (card.supports_bf16 or plan.dtype != "bf16"):
            candidate = plan_serving(plan.model, card, **_plan_args(plan))
            if candidate.ok:
                found.append(Fix(f"a larger card: {card.name}", "a bigger (dearer) GPU", candidate))
                break
    # CPU offload: the fewest whole GiB that leave room for the weights' rest, one full request and the null block.
    kv_needed = vllm_rules.kv_cache_bytes_needed(plan.max_model_len, plan.bytes_per_token, plan.block_size)
    short = plan.weights_on_gpu + plan.activations + plan.overhead + kv_needed - plan.usable
    offload = math.ceil(plan.cpu_offload_gb) + max(1, math.ceil(short / GiB))
    candidate = _plan_with(plan, cpu_offload_gb=float(offload))
    if candidate.ok:
        seconds = candidate.offload_seconds_per_step
        found.append(
            Fix(
                f"--cpu-offload-gb {offload}",
                f"every forward pass streams {offload} GiB over PCIe (~{seconds:.2f} s per generated token)",
                candidate,
            )
        )
    return found


def cheapest_fix(plan: ServingPlan) -> Fix | None:
    """The first of :func:`fixes`, or None when the plan already works (or nothing in reach helps)."""
    found = fixes(plan)
    return found[0] if found else None
