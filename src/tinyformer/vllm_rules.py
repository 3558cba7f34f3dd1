"""vLLM's rules, written once: every fact about vLLM (0.32) that the suite predicts or refuses by.

Everything that sizes a vLLM KV cache or refuses a configuration calls this module: the serving
lessons' :class:`~tinyformer.serving.budget.KVBudget`, the classroom planner, the GPU planner
:func:`~tinyformer.memory.plan_serving`, the widgets and the exercise checkers.
``tests/test_vllm_rules.py`` checks the table of predictions against vLLM's own engine.

What vLLM does, in order:

1. **Head sizes.** The CPU attention kernel runs head sizes :data:`CPU_HEAD_SIZES`; any other starts
   and then kills the engine on the first request ("Unsupported CPU attention configuration: head_dim=16").
2. **Blocks.** The KV cache is paged in blocks of ``block_size`` tokens for all layers at once: 16 on
   NVIDIA GPUs, 128 on the CPU backend (``--block-size`` takes a multiple of 32 there).
   ``num_blocks = floor(kv_bytes / (block_size x bytes_per_token))``; leftover bytes hold nothing.
3. **The null block.** The block pool keeps :data:`NULL_BLOCKS` block back as a placeholder, so N blocks
   serve N - 1 blocks' worth of requests.
4. **Refusals at start-up.** ``max_model_len`` above the model's position table; a tensor-parallel size
   that does not divide the attention heads; a KV budget that, less the null block, is empty ("No
   available memory for the cache blocks") or cannot hold one request of ``max_model_len`` tokens in
   whole blocks ("To serve at least one request ..."). 1 block is empty; 2 blocks hold 1 usable block.
5. **The capacity line.** A request of ``max_model_len`` tokens takes ``ceil(max_model_len /
   block_size)`` blocks; vLLM logs ``<device> KV cache size: N tokens, Maximum concurrency for L tokens
   per request: X.XXx`` with X = num_blocks / blocks per request (null block included) and
   N = int(X x L).

Bytes per token (``2 x n_layer x n_kv_heads x head_dim x dtype bytes`` on one tensor-parallel rank)
is the byte formula :func:`tinyformer.memory.formulas.kv_bytes_per_token`, re-exported here.
All byte counts are per worker: ``--kv-cache-memory-bytes`` is per worker. With pipeline parallelism a worker
caches only its stage's layers (:func:`tinyformer.memory.architecture.stage_layer_counts`), and vLLM gives every
worker the blocks the fullest stage's worker can hold (``get_kv_cache_configs``).
"""

from __future__ import annotations

from dataclasses import dataclass

from tinyformer.memory.formulas import GiB, kv_bytes_per_token, positive

__all__ = [
    "BLOCK_SIZE",
    "NO_CHUNKED_PREFILL_POOLINGS",
    "POOLING_TYPES",
    "batched_tokens_refusal",
    "chunked_prefill_enabled",
    "CPU_BLOCK_MULTIPLE",
    "CPU_BLOCK_SIZE",
    "CPU_HEAD_SIZES",
    "GPU_BLOCK_SIZE",
    "NULL_BLOCKS",
    "KVCapacity",
    "Refusal",
    "blocks_for_tokens",
    "block_size_supported",
    "bytes_for_tokens",
    "estimated_max_model_len",
    "format_gib",
    "head_size_supported",
    "kv_budget_refusal",
    "kv_bytes_per_token",
    "kv_cache_blocks",
    "kv_cache_bytes_needed",
    "kv_cache_tokens",
    "log_device",
    "max_model_len_refusal",
    "tensor_parallel_refusal",
    "usable_blocks",
    "vllm_kv_capacity",
]

# The adapter ranks vLLM accepts for --max-lora-rank (vllm.config.lora.MaxLoRARanks); an adapter of a rank up to it
# is served.
LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)

# Head sizes vLLM's CPU attention kernel can run (CPUAttentionBackend.get_supported_head_sizes).
CPU_HEAD_SIZES = (32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512)

# Tokens per KV block: vLLM's defaults by device ("cpu" backend, "cuda" GPUs).
CPU_BLOCK_SIZE = 128
GPU_BLOCK_SIZE = 16
BLOCK_SIZE = {"cpu": CPU_BLOCK_SIZE, "cuda": GPU_BLOCK_SIZE}
# The CPU backend takes other block sizes that are a multiple of this (others only warn and run slowly;
# tinyformer refuses them).
CPU_BLOCK_MULTIPLE = 32

NULL_BLOCKS = 1  # the block pool's placeholder block: never given to a request


def log_device(device: str) -> str:
    """How vLLM's log names a device: "cuda" -> "GPU", "cpu" -> "CPU"."""
    return "GPU" if device in ("cuda", "GPU") else device.upper()


# ----- whole blocks ------------------------------------------------------------------------------


def kv_cache_blocks(kv_bytes: int, bytes_per_token: int, block_size: int) -> int:
    """How many whole KV blocks fit in ``kv_bytes``: floor(kv_bytes / (block_size x bytes_per_token)).

    vLLM allocates the cache in blocks (pages) of ``block_size`` tokens for all layers at once;
    leftover bytes smaller than a block are unused.
    """
    positive(bytes_per_token=bytes_per_token, block_size=block_size)
    if kv_bytes < 0:
        raise ValueError(f"kv_bytes must be >= 0, got {kv_bytes}.")
    return int(kv_bytes) // (block_size * bytes_per_token)


def usable_blocks(num_blocks: int) -> int:
    """Blocks requests can get: all but the null block."""
    return max(num_blocks - NULL_BLOCKS, 0)


def blocks_for_tokens(tokens: int, block_size: int) -> int:
    """Blocks that ``tokens`` token slots take: a partly filled block is still a whole block."""
    positive(block_size=block_size)
    return -(-tokens // block_size)


def bytes_for_tokens(tokens: int, bytes_per_token: int, block_size: int, *, null_block: bool = False) -> int:
    """Bytes that hold ``tokens`` token slots, rounded UP to whole blocks (+ the null block if asked)."""
    positive(tokens=tokens, bytes_per_token=bytes_per_token, block_size=block_size)
    blocks = blocks_for_tokens(tokens, block_size) + (NULL_BLOCKS if null_block else 0)
    return blocks * block_size * bytes_per_token


# ----- the capacity line ------------------------------------------------------------------------


@dataclass(frozen=True)
class KVCapacity:
    """What vLLM logs after sizing its KV cache (per rank; every rank gets the same)."""

    num_blocks: int
    block_size: int
    max_model_len: int
    bytes_per_token: int

    @property
    def blocks_per_request(self) -> int:
        """Blocks one max_model_len request needs: ceil(max_model_len / block_size)."""
        return blocks_for_tokens(self.max_model_len, self.block_size)

    @property
    def usable_blocks(self) -> int:
        """Blocks requests can actually get (vLLM keeps the null block back)."""
        return usable_blocks(self.num_blocks)

    @property
    def max_concurrency(self) -> float:
        """vLLM's reported concurrency: num_blocks / blocks_per_request (it counts the null block too)."""
        return self.num_blocks / self.blocks_per_request

    @property
    def tokens(self) -> int:
        """vLLM's "KV cache size": int(max_concurrency x max_model_len), as vLLM computes it."""
        return int(self.max_concurrency * self.max_model_len)

    @property
    def bytes_per_block(self) -> int:
        return self.block_size * self.bytes_per_token

    def log_line(self, device: str = "GPU") -> str:
        """The line vLLM prints, e.g. ``CPU KV cache size: 1,280 tokens, Maximum concurrency for 256
        tokens per request: 5.00x``. ``device``: "CPU"/"cpu" or "GPU"/"cuda"."""
        return (
            f"{log_device(device)} KV cache size: {self.tokens:,} tokens, Maximum concurrency for "
            f"{self.max_model_len:,} tokens per request: {self.max_concurrency:.2f}x"
        )


def vllm_kv_capacity(kv_bytes: int, bytes_per_token: int, block_size: int, max_model_len: int) -> KVCapacity:
    """vLLM's KV-cache sizing for a full-attention model: whole blocks, then concurrency and tokens.

    num_blocks = floor(kv_bytes / (block_size x bytes_per_token)); a max_model_len request needs
    ceil(max_model_len / block_size) blocks; max concurrency = num_blocks / that; the reported token
    count is int(max concurrency x max_model_len). ``kv_bytes`` and ``bytes_per_token`` are per
    tensor-parallel rank (``--kv-cache-memory-bytes`` is per worker).
    """
    positive(max_model_len=max_model_len)
    blocks = kv_cache_blocks(kv_bytes, bytes_per_token, block_size)
    return KVCapacity(blocks, block_size, max_model_len, bytes_per_token)


def kv_cache_tokens(kv_bytes: int, bytes_per_token: int, block_size: int, max_model_len: int | None = None) -> int:
    """The "KV cache size: N tokens" vLLM reports for a KV budget of ``kv_bytes`` (per rank).

    ``blocks x block_size`` when ``max_model_len`` is a multiple of the block size (or not given).
    vLLM actually reports ``int(max_concurrency x max_model_len)`` (see :func:`vllm_kv_capacity`),
    which is smaller when a request's last block is only partly used.
    """
    if max_model_len is None:
        return kv_cache_blocks(kv_bytes, bytes_per_token, block_size) * block_size
    return vllm_kv_capacity(kv_bytes, bytes_per_token, block_size, max_model_len).tokens


# ----- what vLLM refuses, in its own words --------------------------------------------------------


@dataclass(frozen=True)
class Refusal:
    """A start-up vLLM refuses: ``kind`` names the rule, ``vllm_says`` is the start of vLLM's own message."""

    kind: str  # "max_model_len_above_model", "bad_tensor_parallel_size", "no_kv_memory", "max_model_len_too_long"
    vllm_says: str


def format_gib(n: int) -> str:
    """vLLM's rounding in its messages: round(n / GiB, 2), printed as Python prints a float ("0.0")."""
    return f"{round(n / GiB, 2)}"


def max_model_len_refusal(max_model_len: int, max_position_embeddings: int) -> Refusal | None:
    """vLLM refuses a max_model_len above the model's position table (config validation, before loading).

    ``derived`` is printed as vLLM derives it from config.json: a float (``256.0``) for GPT-2 exports.
    """
    if max_model_len <= max_position_embeddings:
        return None
    return Refusal(
        "max_model_len_above_model",
        f"User-specified max_model_len ({max_model_len}) is greater than the derived max_model_len "
        f"(max_position_embeddings={float(max_position_embeddings)} or model_max_length=None in model's "
        "config.json).",
    )


def estimated_max_model_len(kv_bytes: int, bytes_per_token: int, block_size: int, max_model_len: int) -> int:
    """The longest max_model_len whose one request fits in ``kv_bytes`` after the null block (0 if none):
    what vLLM suggests in its "To serve at least one request" message."""
    blocks = usable_blocks(kv_cache_blocks(kv_bytes, bytes_per_token, block_size))
    return min(blocks * block_size, max_model_len)


def kv_budget_refusal(kv_bytes: int, bytes_per_token: int, block_size: int, max_model_len: int) -> Refusal | None:
    """vLLM's check of the KV budget (per worker) at start-up, null block first.

    vLLM subtracts one block's bytes (the null block), then refuses when nothing is left ("No available
    memory for the cache blocks") or when what is left is less than one max_model_len request in whole
    blocks ("To serve at least one request ..."). GiB figures are rounded as vLLM rounds them (tiny
    models read "0.0 GiB"), so callers restate them in bytes and tokens.
    """
    positive(bytes_per_token=bytes_per_token, block_size=block_size, max_model_len=max_model_len)
    bytes_per_block = block_size * bytes_per_token
    available = int(kv_bytes) - NULL_BLOCKS * bytes_per_block
    if available <= 0:
        return Refusal(
            "no_kv_memory",
            "No available memory for the cache blocks. Try increasing `gpu_memory_utilization` when initializing "
            "the engine (this flag also controls CPU memory reservation on the CPU backend, despite its name).",
        )
    needed = blocks_for_tokens(max_model_len, block_size) * bytes_per_block
    if needed <= available:
        return None
    estimate = estimated_max_model_len(kv_bytes, bytes_per_token, block_size, max_model_len)
    estimated = f"Based on the available memory, the estimated maximum model length is {estimate}. " if estimate else ""
    return Refusal(
        "max_model_len_too_long",
        f"To serve at least one request with the model's max seq len ({max_model_len}), ({format_gib(needed)} GiB "
        f"KV cache is needed, which is larger than the available KV cache memory ({format_gib(available)} GiB). "
        f"{estimated}Try increasing `gpu_memory_utilization` (which also controls CPU memory on the CPU backend) "
        "or decreasing `max_model_len` when initializing the engine.",
    )


def kv_cache_bytes_needed(max_model_len: int, bytes_per_token: int, block_size: int) -> int:
    """The smallest KV budget vLLM accepts for ``max_model_len``: one request's blocks + the null block."""
    return bytes_for_tokens(max_model_len, bytes_per_token, block_size, null_block=True)


def tensor_parallel_refusal(n_head: int, tensor_parallel_size: int) -> Refusal | None:
    """Each worker holds whole attention heads: vLLM refuses a tensor-parallel size that does not divide them."""
    if n_head % tensor_parallel_size == 0:
        return None
    return Refusal(
        "bad_tensor_parallel_size",
        f"Total number of attention heads ({n_head}) must be divisible by tensor parallel size "
        f"({tensor_parallel_size}).",
    )


def head_size_supported(head_dim: int, device: str = "cpu") -> bool:
    """False when vLLM's attention kernel for ``device`` has no code path for this head size (CPU only)."""
    return device != "cpu" or head_dim in CPU_HEAD_SIZES


def block_size_supported(block_size: int, device: str = "cpu") -> bool:
    """Block sizes tinyformer lets vLLM use: on CPU a multiple of 32 (vLLM only warns about others)."""
    return block_size > 0 and (device != "cpu" or block_size % CPU_BLOCK_MULTIPLE == 0)


# ----- pooling (embedding) servers --------------------------------------------------------------------------
# One engine runs one runner: a server started with ``--runner pooling`` has no /v1/completions route (it answers
# 404 Not Found), and a generating server has no /v1/embeddings. Generation and embeddings need two servers.

POOLING_TYPES = ("MEAN", "LAST", "CLS")
# ModelConfig.is_chunked_prefill_supported: a causal model pooled by MEAN or CLS needs every token of the
# prompt in one step (a mean over a half-computed prompt is wrong), so vLLM turns chunked prefill off for it.
NO_CHUNKED_PREFILL_POOLINGS = ("MEAN", "CLS")


def chunked_prefill_enabled(pooling_type: str | None) -> bool:
    """Whether vLLM 0.32 keeps chunked prefill on for a causal (GPT-2) model with this pooling (None: generating)."""
    return pooling_type not in NO_CHUNKED_PREFILL_POOLINGS


def batched_tokens_refusal(max_num_batched_tokens: int, max_model_len: int, pooling_type: str | None) -> Refusal | None:
    """SchedulerConfig.verify_max_model_len: without chunked prefill a prompt is scheduled whole, so the token budget
    per step must hold the longest one (``max_num_batched_tokens >= max_model_len``)."""
    if chunked_prefill_enabled(pooling_type) or max_num_batched_tokens >= max_model_len:
        return None
    return Refusal(
        "batched_tokens_below_max_model_len",
        f"max_num_batched_tokens ({max_num_batched_tokens}) is smaller than max_model_len ({max_model_len}). This "
        "effectively limits the maximum sequence length to max_num_batched_tokens and makes vLLM reject longer "
        "sequences. Please increase max_num_batched_tokens or decrease max_model_len.",
    )


# ----- how each vLLM release profiles a GPU start-up (read in each release's own source) ---------------------
# V0: worker.determine_num_available_blocks runs model_runner.profile_run; V1: gpu_worker.determine_available_memory
# runs gpu_model_runner.profile_run (_dummy_run + _dummy_sampler_run). Both then take
# KV bytes = total x gpu_memory_utilization - (weights + torch activation peak + non-torch increase);
# CUDA graphs are captured after the KV cache is allocated and are not subtracted (0.6-0.11).

V0_MAX_NUM_SEQS = 256  # EngineArgs: max_num_seqs = 256 if not VLLM_USE_V1
V0_CHUNKED_PREFILL_TOKENS = 2048  # SchedulerConfig: chunked prefill's default token budget (V0)
# SchedulerConfig's _MULTIMODAL_MODEL_MAX_NUM_BATCHED_TOKENS: 4096 in 0.6.1, 5120 in 0.6.5 (the releases read).
V0_MULTIMODAL_MIN_TOKENS = {(0, 6, 1): 4096, (0, 6, 5): 5120}
LONG_CONTEXT = 32768  # EngineArgs: above this V0 turns chunked prefill on by default (text models)
# Before 0.6.5 the V0 worker took the profiling peak as the drop in free memory after the profiling run
# (torch.cuda.mem_get_info; 0.4.3's worker.py), so blocks PyTorch's allocator still caches count as used: such
# a release leaves fewer KV blocks than the allocated peak implies, by an amount no log breaks down: the start-up
# calculator multiplies the allocated peak by the fitted ``free_memory_drop_factor`` (reference/vllm_startup_logs.json).
FREE_MEMORY_PROFILING_BEFORE = (0, 6, 5)
LONG_CONTEXT_CHUNKED_SINCE = (0, 5, 3)  # that default's first release (absent from 0.4.3-0.5.2's arg_utils.py)
# V1 (read in 0.11.0's gpu_model_runner.profile_run): the dummy multimodal item's encoder output, padded to the
# encoder budget (max of max_num_batched_tokens and the largest item's tokens), stays cached through the text
# model's dummy run and the sampler's, so it adds to their peak.
QWEN3_VL_TOKENS_PER_VIDEO_TOKEN = 12.5  # qwen3_vl.get_max_video_tokens: a timestamp text around each soft token
MLA_LATENT_CACHE_SINCE = (0, 7, 1)  # vLLM 0.7.1 caches MLA's latent; before, K and V per head
# What an MLA model's attention keeps next to its projections after loading (process_weights_after_loading), in the
# model dtype; it counts in the "model weights" figure. 0.7.1-0.7.3 (attention/backends/mla/utils.py, with
# VLLM_MLA_PERFORM_MATRIX_ABSORPTION on by default) absorb kv_b_proj into the query and output projections and
# keep the products (W_Q_UK, W_UV_O) and a copy of the query's rotary columns (W_QR). From 0.8.0
# (attention/backends/mla/common.py, read in 0.8.0 and 0.8.3) W_UK_T and W_UV are views of kv_b_proj's weight,
# except that a quantised kv_b_proj is first dequantised into a model-dtype copy ("no quantized bmm's").
MLA_ABSORBED_WEIGHTS_UNTIL = (0, 8, 0)


def mla_weight_copies(version: tuple[int, int, int], env: dict | None = None, quantised: bool = False) -> str | None:
    """Which copies an MLA model keeps after loading: "absorbed" (0.7.1-0.7.3: W_Q_UK, W_QR, W_UV_O), "kv_b"
    (0.8.0 on, a quantised checkpoint: kv_b_proj dequantised) or None; None too when VLLM_MLA_DISABLE=1, and
    before 0.8.0 when VLLM_MLA_PERFORM_MATRIX_ABSORPTION=0. (0.7.x fp8 checkpoints requantise the absorbed
    products to fp8: no shared log has one.)"""
    env = env or {}
    if version < MLA_LATENT_CACHE_SINCE or int(env.get("VLLM_MLA_DISABLE", "0")) != 0:
        return None
    if version < MLA_ABSORBED_WEIGHTS_UNTIL:
        return "absorbed" if int(env.get("VLLM_MLA_PERFORM_MATRIX_ABSORPTION", "1")) != 0 else None
    return "kv_b" if quantised else None


# V0's dummy request carries a maximal video beside its image for a model whose processor takes videos (0.8.4
# profiling: mm_counts of every modality) from 0.7.0; 0.6.6 (qwen2_vl's dummy processor inputs) built images only,
# while its token budget already summed the image and video maxima. Read in 0.6.6 and 0.8.4; 0.7.0 is the release
# this file took for the change before (its source not read).
VIDEO_DUMMY_SINCE = (0, 7, 0)


# Pixel values reach the GPU in the HF image processor's dtype, float32, before 0.9.0: the model runner's
# MultiModalKwargs.as_kwargs(inputs, device=...) only moves them (a .to(device); read in 0.8.3, 0.8.4, 0.8.5, V0
# model_runner.execute_model and V1 gpu_model_runner), and the tower then takes a model-dtype copy that lives
# through it (gemma3_mm._image_pixels_to_features: pixel_values.to(dtype=target_dtype); qwen2_5_vl's
# _process_image_input: pixel_values.type(self.visual.dtype)), so each pixel value holds 4 + 2 bytes. 0.9.0's
# as_kwargs(..., dtype=model_config.dtype) casts before the copy: one model-dtype tensor. Releases before 0.8.3
# (0.6.x: log20, the seeds) are taken to do the same as 0.8.3 (not read).
PIXELS_IN_MODEL_DTYPE_SINCE = (0, 9, 0)


def pixel_value_bytes(version: tuple[int, int, int], model_bytes: int) -> int:
    """Bytes each pixel value of a dummy image holds on the GPU while the vision tower runs on it."""
    return model_bytes if version >= PIXELS_IN_MODEL_DTYPE_SINCE else 4 + model_bytes


def pixel_kwarg_bytes(version: tuple[int, int, int], model_bytes: int) -> int:
    """Bytes each pixel value holds as the runner moved it to the GPU (float32 before 0.9.0): what an item holds
    while the tower runs on another call, or the text model runs."""
    return model_bytes if version >= PIXELS_IN_MODEL_DTYPE_SINCE else 4


def parse_version(text: str | None) -> tuple[int, int, int]:
    """(major, minor, patch) of a version as records write it: "0.8.3rc2.dev224+g49c", "0.7.0/0.7.1 (inferred)"."""
    import re

    found = re.match(r"\s*(\d+)\.(\d+)(?:\.(\d+))?", text or "")
    if not found:
        raise ValueError(f"vllm_version must start with a release number like '0.8.5', got {text!r}.")
    major, minor, patch = found.groups()
    return int(major), int(minor), int(patch or 0)


# config.json keys vLLM reads a model's length from (_get_and_verify_max_len): the smallest one present wins.
MAX_LEN_KEYS = ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length", "model_max_length",
                "max_sequence_length", "max_seq_length", "seq_len")  # fmt: skip
UNSCALED_ROPE_TYPES = ("su", "longrope", "llama3")  # their factor does not lengthen the default max_model_len


def default_max_model_len(config: dict) -> int:
    """max_model_len when none is asked (``_get_and_verify_max_len``, the same in 0.4.3, 0.8.3 and 0.11.0): the
    smallest length key in config.json, times the RoPE scaling ``factor`` unless the rope type is su, longrope
    or llama3 (yarn starts from ``original_max_position_embeddings``); Gemma 3's length is already scaled.
    So deepseek-coder-6.7b (16384 positions, linear factor 4) defaults to 65,536 tokens."""
    lengths = [config[key] for key in MAX_LEN_KEYS if isinstance(config.get(key), int | float)]
    derived = min(lengths) if lengths else 2048
    rope = config.get("rope_scaling") or {}
    rope_type = rope.get("rope_type", rope.get("type"))
    if rope and rope_type not in UNSCALED_ROPE_TYPES and "Gemma3" not in str(config.get("architectures")):
        if rope_type == "yarn":
            derived = rope["original_max_position_embeddings"]
        derived *= rope.get("factor", 1.0)
    return int(derived)


def engine_for(
    version: tuple[int, int, int],
    compute_capability: float,
    *,
    pipeline_parallel: int = 1,
    enable_lora: bool = False,
    env: dict | None = None,
    multimodal: bool = False,
) -> str:
    """Which engine a release runs: "V0" before 0.8, "V1" from 0.10; 0.8/0.9 start V1 unless VLLM_USE_V1=0
    or a feature V1 lacked sends them back to V0 (EngineArgs._is_v1_supported_oracle): compute capability
    below 8.0, pipeline parallelism (0.8), LoRA (before 0.8.2)."""
    env = env or {}
    if version >= (0, 10, 0):
        return "V1"
    if version < (0, 8, 0) or env.get("VLLM_USE_V1") == "0":
        return "V0" if env.get("VLLM_USE_V1") != "1" else "V1"
    if compute_capability < 8.0 or (pipeline_parallel > 1 and version < (0, 9, 0)):
        return "V0"
    if enable_lora and version < (0, 8, 2):
        return "V0"
    return "V1"


def chunked_prefill_on(
    engine: str,
    max_model_len: int,
    *,
    asked: bool | None = None,
    multimodal: bool = False,
    sliding_window: bool = False,
    enable_lora: bool = False,
    version: tuple[int, int, int] = (0, 6, 5),
) -> bool:
    """Whether chunked prefill is on. V1: always (its scheduler chunks every prompt). V0: as asked, else (from
    0.5.3) only for a text model without sliding window or LoRA whose max_model_len is above 32K (EngineArgs)."""
    if engine == "V1":
        return True
    if asked is not None:
        return asked
    long_context = max_model_len > LONG_CONTEXT and version >= LONG_CONTEXT_CHUNKED_SINCE
    return long_context and not (multimodal or sliding_window or enable_lora)


def v0_chunked_prefill_supported(*, multimodal: bool, mla: bool, sliding_window: bool) -> bool:
    """Whether V0 can chunk prefill at all: not for a multimodal or MLA model (0.8.3's EngineArgs: "Chunked
    prefill not supported for Multimodal or MLA in V0"), nor with a sliding window (0.5.5-0.8.3 never turn it
    on for one). Where it can't, a shorter max_model_len is the only way to shrink the profiling batch."""
    return not (multimodal or mla or sliding_window)


def profiling_batch(
    engine: str,
    max_model_len: int,
    chunked: bool,
    *,
    gpu_memory_gib: float,
    gpu_name: str = "",
    multimodal: bool = False,
    max_num_batched_tokens: int | None = None,
    max_num_seqs: int | None = None,
    version: tuple[int, int, int] = (0, 6, 5),
) -> tuple[int, int]:
    """(tokens, sequences) of the dummy batch the profiling run sends through the model.

    V0 without chunked prefill: max(max_model_len, 2048) tokens (a prompt is scheduled whole, so the budget
    must hold the longest; 4096 or 5120 at least for a multimodal model, by release), 256 sequences; with
    chunked prefill 2048.
    V1: 8192 tokens and 1024 sequences on cards of 70 GiB or more (A100s excepted), else 2048 and 256
    (the OpenAI server's defaults). Asked values win.
    """
    if engine == "V1":
        big = gpu_memory_gib >= 70 and "a100" not in gpu_name.lower()
        tokens, seqs = (8192, 1024) if big else (2048, 256)
    else:
        tokens = V0_CHUNKED_PREFILL_TOKENS if chunked else max(max_model_len, 2048)
        if multimodal:
            since = max(release for release in V0_MULTIMODAL_MIN_TOKENS if release <= max(version, (0, 6, 1)))
            tokens = max(tokens, V0_MULTIMODAL_MIN_TOKENS[since])
        seqs = V0_MAX_NUM_SEQS
    tokens = max_num_batched_tokens or tokens
    return tokens, min(max_num_seqs or seqs, tokens)
