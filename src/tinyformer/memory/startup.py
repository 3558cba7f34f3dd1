"""Predict a vLLM GPU start-up term by term, as the release profiles it: weights, activation peak, non-torch
memory, the KV cache left, its blocks and tokens, CUDA graphs, and whether the engine starts.

:func:`predict_startup` takes one record's settings (``reference/vllm_startup_logs.json``: ``model``, ``config``
(the model's config.json), ``vllm_version``, ``dtype``, ``quantization``, ``kv_cache_dtype``, ``tp``, ``pp``,
``gpu``, ``gpu_total_gib``, ``gpu_memory_utilization``, ``max_model_len``, ``max_num_seqs``,
``max_num_batched_tokens``, ``enforce_eager``, ``block_size``; optional launch settings ``env``,
``enable_lora``, ``enable_chunked_prefill``, ``disable_custom_all_reduce``, ``nodes``). Missing values take
the release's defaults. What a record logged is never read here: :mod:`benchmarks.startup_logs` scores it.

Per release (:mod:`tinyformer.vllm_rules`: engine, chunked prefill, the profiling batch), then per GPU:

* weights: :meth:`Architecture.weight_bytes_per_gpu` (tensor and pipeline parallel, quantised formats) plus what
  loading builds beside them (:func:`load_time_bytes`: rotary tables, MLA's absorbed or dequantised copies);
* activation peak (what ``torch.cuda.max_memory_allocated`` rises by in the profiling run; before 0.6.5 the
  drop in free memory, priced with a fitted factor): the largest of the decoder layer's transients for the
  batch's tokens, the sampler's on ``max_num_seqs`` logit rows, and a vision tower's on its dummy images,
  counted per patch from what its layers hold (:func:`activation_peak_bytes`, :func:`vision_layer_bytes`);
* non-torch memory (CUDA context growth, NCCL and custom all-reduce buffers): constants fitted to the logs
  (:data:`FITTED`), by whether the ranks talk over NVLink;
* KV bytes = total x gpu_memory_utilization - weights - activation peak - non-torch; whole blocks per rank,
  the smallest rank (pipeline stage) deciding; CUDA graphs come after and are reported, not subtracted.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from functools import cache
from importlib import resources

from tinyformer import vllm_rules
from tinyformer.memory.architecture import Architecture, stage_layer_counts
from tinyformer.memory.formulas import GiB, dtype_name

SETTINGS = (
    "model", "config", "vllm_version", "dtype", "quantization", "kv_cache_dtype", "tp", "pp", "gpu", "gpu_total_gib",
    "gpu_memory_utilization", "max_model_len", "max_num_seqs", "max_num_batched_tokens", "enforce_eager",
    "block_size", "env", "enable_lora", "enable_chunked_prefill", "disable_custom_all_reduce", "nodes",
)  # fmt: skip
OUTCOMES = ("starts", "kv_too_small", "oom", "no_kv_memory")
LATEST_VERSION = "0.11.0"  # a case without vllm_version is priced as this release

# Bytes per [logit row x vocabulary] element at the sampler's peak that vLLM's sampler code accounts for
# (top-k/top-p with the profiling run's top_p=0.99, top_k=vocab-1): model-dtype logits 2, their fp32 copy 4,
# sorted 4 + int64 indices 8, top-k mask 1, softmax 4, cumsum 4, top-p mask 1, re-scattered logits 4. The logs
# say 38.4 (``fitted("sampler_bytes_per_logit")``, used below); this is the floor the fit is checked against.
SAMPLER_BYTES_PER_LOGIT = 32
# [tokens, hidden] tensors alive through a decoder layer: the hidden states, the residual, the normed input.
RESIDUAL_COPIES = 3


@cache
def reference() -> dict:
    """The shipped start-up logs, GPU table and fitted constants (reference/vllm_startup_logs.json)."""
    return json.loads((resources.files("tinyformer") / "reference" / "vllm_startup_logs.json").read_text())


def fitted(name: str) -> float:
    """A constant fitted to the shared logs (``fitted`` in the reference file names the cases)."""
    return reference()["fitted"][name]["value"]


@dataclass(frozen=True)
class StartupPrediction:
    """What vLLM would log at start-up (per GPU; with pipeline parallelism, the stage that decides)."""

    outcome: str  # one of OUTCOMES
    engine: str  # "V0" or "V1"
    version: tuple[int, int, int]
    gpu_total_gib: float
    gpu_memory_utilization: float
    usable_gib: float
    model_weights_gib: float
    activation_peak_gib: float
    non_torch_gib: float
    kv_cache_gib: float
    gpu_blocks: int
    kv_cache_tokens: int
    cuda_graph_gib: float | None
    block_size: int
    bytes_per_token: int
    max_model_len: int
    max_num_batched_tokens: int
    max_num_seqs: int
    chunked_prefill: bool
    images_profiled: int
    message: str
    terms: dict = field(default_factory=dict)  # each term's parts, for the doctor

    @property
    def max_concurrency(self) -> float:
        return self.kv_cache_tokens / self.max_model_len

    def log_lines(self) -> list[str]:
        """The memory lines this release prints, with the predicted numbers."""
        if self.engine == "V0" and self.version >= (0, 6, 5):
            lines = [
                f"the current vLLM instance can use total_gpu_memory ({self.gpu_total_gib:.2f}GiB) x "
                f"gpu_memory_utilization ({self.gpu_memory_utilization:.2f}) = {self.usable_gib:.2f}GiB",
                f"model weights take {self.model_weights_gib:.2f}GiB; non_torch_memory takes "
                f"{self.non_torch_gib:.2f}GiB; PyTorch activation peak memory takes "
                f"{self.activation_peak_gib:.2f}GiB; the rest of the memory "
                f"reserved for KV Cache is {self.kv_cache_gib:.2f}GiB.",
            ]
        elif self.engine == "V0":
            lines = [f"Loading model weights took {self.model_weights_gib:.4f} GB"]
        else:
            lines = [
                f"Model loading took {self.model_weights_gib:.4f} GiB",
                f"Available KV cache memory: {self.kv_cache_gib:.2f} GiB",
            ]
        if self.engine == "V0":
            lines.append(f"# GPU blocks: {self.gpu_blocks}")
        elif self.gpu_blocks > 0:
            lines.append(f"GPU KV cache size: {self.kv_cache_tokens:,} tokens")
        if self.gpu_blocks > 0:
            lines.append(
                f"Maximum concurrency for {self.max_model_len:,} tokens per request: {self.max_concurrency:.2f}x"
            )
        if self.outcome == "starts" and self.cuda_graph_gib is not None:
            lines.append(f"Graph capturing finished, took {self.cuda_graph_gib:.2f} GiB")
        if self.outcome != "starts":
            lines.append(self.message)
        return lines


# ----- settings --------------------------------------------------------------------------------------------


def _clean(value):
    """A record's value without its annotation: "float16 (inferred: ...)" -> "float16"."""
    if isinstance(value, str):
        return value.split(" (")[0].strip()
    return value


def _settings(case: dict) -> dict:
    if not isinstance(case, dict):
        raise ValueError(f"case must be a dict of settings, got {type(case).__name__}.")
    if not isinstance(case.get("config"), dict) or "hidden_size" not in case["config"]:
        raise ValueError(
            "case['config'] must hold the model's config.json fields (hidden_size, num_hidden_layers, ...)."
        )
    annotated = ("vllm_version", "dtype", "quantization", "kv_cache_dtype")
    return {key: _clean(case.get(key)) if key in annotated else case.get(key) for key in SETTINGS}


def gpu_card(name: str | None, total_gib: float | None) -> dict:
    """The card's row of the reference GPU table (matched by name), with the total memory vLLM logs."""
    text = (name or "").lower().replace(" ", "").replace("-", "")
    for row in reference()["gpus"]:
        if any(key in text for key in row["match"]):
            card = dict(row)
            break
    else:
        if total_gib is None:
            names = sorted(row["name"] for row in reference()["gpus"])
            raise ValueError(f"unknown GPU {name!r} and no gpu_total_gib; name one of {names} or give its memory.")
        card = {"name": name or "GPU", "total_gib": total_gib, "compute_capability": 8.0, "nvlink": False}
    if total_gib is not None:
        card["total_gib"] = float(total_gib)
    return card


def _dtype(setting, arch: Architecture, compute_capability: float) -> str:
    """The activation dtype: as asked, else config.json's; bf16 becomes fp16 below compute capability 8.0."""
    name = dtype_name(setting) if setting not in (None, "auto") else arch.torch_dtype
    if name == "bf16" and compute_capability < 8.0:
        return "fp16"
    return "bf16" if name not in ("fp16", "fp32") else name


# ----- the activation peak ------------------------------------------------------------------------------------


def decoder_peak_bytes(arch: Architecture, tokens: int, tp: int, b: int) -> int:
    """The largest transient of one decoder layer on ``tokens`` tokens, on one rank.

    Dense MLP: gate+up [T, 2I/tp] and the activation's output [T, I/tp]. MoE (fused_moe): per routed copy
    ([T x top_k] rows) the gate+up, activation and down-projection caches [2I, I, hidden], plus the router's
    fp32 logits and the shared experts. Attention: qkv and output projections (fused kernels hold no scores).
    """
    d = arch.hidden
    dense = tokens * 3 * arch.get("intermediate_size", 0) // tp if arch.dense_layers else 0
    moe = 0
    if arch.experts:
        width = arch.moe_intermediate // tp
        moe = tokens * arch.top_k * (3 * width + d) + tokens * arch.experts * 2
        moe += tokens * 3 * arch.shared_intermediate // tp
    if arch.mla:
        c = arch.config
        attention = (
            tokens * arch.heads // tp * (2 * (c["qk_nope_head_dim"] + c["qk_rope_head_dim"]) + 2 * c["v_head_dim"])
        )
    else:
        attention = tokens * (2 * arch.heads + 2 * arch.kv_heads) * arch.head_dim // tp
    return (tokens * d * RESIDUAL_COPIES + max(dense, moe, attention)) * b


def sampler_peak_bytes(arch: Architecture, tokens: int, seqs: int, b: int) -> int:
    """The sampler on one logit row per dummy sequence (top-k/top-p sorting), while the layer output lives."""
    return math.ceil(seqs * arch.vocab * fitted("sampler_bytes_per_logit")) + tokens * arch.hidden * b


def vision_requests(arch: Architecture, tokens: int, seqs: int) -> int:
    """V0's dummy requests: min(max_num_seqs, tokens // the multimodal token budget of one request), at least 1
    (model_runner.profile_run); the budget sums every modality the model registers (an image's tokens, and as
    many again for a model whose processor takes videos: registry.get_max_multimodal_tokens)."""
    budget = (2 if arch.vision.get("video") else 1) * _image_patches_tokens(arch.vision)[1]
    return max(1, min(seqs, tokens // budget))


def vision_dummy(arch: Architecture, tokens: int, seqs: int, engine: str, version=None) -> tuple[int, int]:
    """(dummy items, encoder patches per item) of the profiling run.

    V0: :func:`vision_requests` requests, each with one maximal image and, from
    :data:`vllm_rules.VIDEO_DUMMY_SINCE`, a video as large for a model whose processor takes videos; V1: one
    maximal item of the modality with the most tokens (the logs' "profiled with 1 ... items"), see
    :func:`v1_dummy_item`.
    """
    v = arch.vision
    if not v:
        return 0, 0
    if engine == "V1":
        return 1, v1_dummy_item(arch)[0]
    version = version or vllm_rules.parse_version(LATEST_VERSION)
    items = 2 if v.get("video") and version >= vllm_rules.VIDEO_DUMMY_SINCE else 1
    return vision_requests(arch, tokens, seqs) * items, _image_patches_tokens(v)[0]


def _image_patches_tokens(v: dict) -> tuple[int, int]:
    """(encoder patches, language-model tokens) of the largest image: a fixed-size tower's image tokens plus
    its begin/end markers (``image_token_markers``: Gemma 3 frames its 256 with two), its patches once per
    ``crops`` (Phi-3.5-vision's HD transform: num_crops sub-images and the global one, each through the ViT);
    or max_pixels' patches merged spatial_merge_size^2 to a token."""
    if v.get("fixed_image_tokens"):
        patches = (v["image_size"] // v["patch_size"]) ** 2 * v.get("crops", 1)
        return patches, v["fixed_image_tokens"] + v.get("image_token_markers", 0)
    patches = v["max_pixels"] // v["patch_size"] ** 2
    return patches, patches // v.get("spatial_merge_size", 1) ** 2


def v1_dummy_item(arch: Architecture) -> tuple[int, int]:
    """(encoder patches, encoder-budget tokens) of V1's one dummy item. A video (``video_max_pixels``: the
    video processor bounds frames x height x width) has max_pixels / (patch^2 x temporal_patch_size) patches;
    Qwen3-VL counts 12.5 prompt tokens per video token (its timestamps), which sizes the encoder budget."""
    v = arch.vision
    patches, lm_tokens = _image_patches_tokens(v)
    if v.get("video_max_pixels"):
        video = v["video_max_pixels"] // (v["patch_size"] ** 2 * v.get("temporal_patch_size", 1))
        video_tokens = video // v.get("spatial_merge_size", 1) ** 2
        if "Qwen3VL" in str(arch.get("architectures")):
            video_tokens = int(video_tokens * vllm_rules.QWEN3_VL_TOKENS_PER_VIDEO_TOKEN)
        if video_tokens > lm_tokens:
            return video, video_tokens
    return patches, lm_tokens


def encoder_cache_bytes(arch: Architecture, tokens: int, b: int) -> int:
    """V1's cached dummy encoder output during the text model's profiling run: the encoder budget
    (max(max_num_batched_tokens, the item's tokens)) rows of the tower's output width (out_hidden_size, times
    1 + deepstack_layers for Qwen3-VL, whose output concatenates them)."""
    v = arch.vision
    budget = max(tokens, v1_dummy_item(arch)[1])
    width = v.get("out_hidden_size", arch.hidden) * (1 + v.get("deepstack_layers", 0))
    return budget * width * b


# What a vision tower holds at its peak, per patch, read in vLLM's towers (0.8.3 siglip.py, 0.6.1 clip.py: the
# SigLIP/CLIP encoders with learned position embeddings; 0.6.6 qwen2_vl.py and 0.8.4 qwen2_5_vl.py: the Qwen ViTs
# with a rotary embedding in the tower, ``position_embedding: rotary`` in the record's vision_config). Every layer
# keeps its input (the encoder loop's variable), the residual sum and the normed input while its MLP runs; a
# CLIP/SigLIP encoder also keeps its embedded input to the end (the transformer's ``hidden_states`` and the encoder's
# ``hidden_states_pool``). MLP: fc1's output and the activation's (2 I); gated (Qwen2.5-VL's gate/up/down): the
# activated gate, up and their product, then down's output (3 I + h). Attention of a learned-position tower: q, k, v
# are views of the qkv output handed to MultiHeadAttention (xformers: no [T, T] matrix), plus its output. Attention
# of a rotary tower (Qwen2VisionAttention, Qwen2_5_VisionAttention): the qkv output stays alive while q, k, v are
# copied contiguous, and apply_rotary_pos_emb_vision rotates q, then k, in float32 (t.float(), x * cos,
# rotate_half(x), its * sin: four fp32 copies of one of them alive at once), beside the fp32 tables: rotary_pos_emb,
# its cos and sin, and their repeat to head_dim (14 B x head_dim). Checked on the logs: log07's SigLIP tower (2.17
# GiB) is under the 2.21 GiB its lines leave, and log20's Qwen2-VL tower (0.49 GiB) under its text run, as its logged
# 1.16 GiB says.
FP32_ROTARY_COPIES = 4


def vision_layer_bytes(v: dict, tp: int, b: int) -> int:
    """Bytes per patch a vision tower layer holds at its peak (the larger of its attention and MLP phases)."""
    h = v["hidden_size"]
    width = v["intermediate_size"] // tp
    rotary = v.get("position_embedding") == "rotary"
    kept = 0 if rotary else h  # CLIP/SigLIP keep the embedded input through the encoder
    mlp = 3 * width + h if v.get("mlp") == "gated" else 2 * width
    mlp_phase = (kept + 3 * h + mlp) * b
    if rotary:
        head_dim = h // v["num_heads"]
        attention_phase = (2 * h + 6 * h // tp) * b  # input, normed, qkv and its q/k/v copies
        attention_phase += FP32_ROTARY_COPIES * 4 * h // tp + 14 * head_dim
    else:
        attention_phase = (kept + 2 * h + 4 * h // tp) * b  # input, normed, qkv, attention output
    return max(mlp_phase, attention_phase)


def pixel_values_per_patch(v: dict) -> int:
    """RGB values of one patch (times temporal_patch_size frames for the Qwen ViTs' 3-D patches)."""
    return 3 * v.get("temporal_patch_size", 1) * v["patch_size"] ** 2


def vision_calls(arch: Architecture, images: int, engine: str, version) -> list[int]:
    """Dummy items per call of the vision tower: V0 hands the model every request's items at once and the model
    runs its tower once per modality (qwen2_5_vl.get_input_embeddings_v0: images, then videos), so a model that
    takes videos makes two calls of half the items; V1 encodes its one item."""
    if engine == "V0" and arch.vision.get("video") and version >= vllm_rules.VIDEO_DUMMY_SINCE:
        return [images // 2, images - images // 2]
    return [images]


def vision_peak_bytes(arch: Architecture, images: int, patches: int, tp: int, b: int, version, engine: str) -> int:
    """The vision tower's peak on the profiling run's dummy images: the largest call's patches times what a layer
    holds per patch (:func:`vision_layer_bytes`), plus the dummy pixels: every item's as the runner moved them to
    the GPU (:func:`vllm_rules.pixel_kwarg_bytes` a value) and the call's model-dtype copy the tower reads."""
    v = arch.vision
    values = pixel_values_per_patch(v)
    kwarg = vllm_rules.pixel_kwarg_bytes(version, b)
    copy = vllm_rules.pixel_value_bytes(version, b) - kwarg
    call = max(vision_calls(arch, images, engine, version)) * patches
    return call * (vision_layer_bytes(v, tp, b) + values * copy) + images * patches * values * kwarg


def activation_peak_bytes(arch, tokens, seqs, tp, b, *, last_stage=True, first_stage=True, engine="V0", version=None):
    """(peak bytes, dummy images, parts) of the profiling run on one rank; ``version`` (a parsed release, the
    latest if None) decides the dummy pixels' dtype.

    V0 with a vision tower: the text model runs on the whole dummy prompt, which holds every request's
    multimodal tokens even past the batch's ``tokens`` (0.8.4 profiling.get_decoder_dummy_data only warns), with
    the dummy pixels still alive in the runner's multimodal kwargs."""
    version = version or vllm_rules.parse_version(LATEST_VERSION)
    images, patches, text_tokens, held = 0, 0, tokens, 0
    if first_stage and arch.vision:
        images, patches = vision_dummy(arch, tokens, seqs, engine, version)
        if engine == "V0":
            text_tokens = max(tokens, images * _image_patches_tokens(arch.vision)[1])
            held = images * patches * pixel_values_per_patch(arch.vision) * vllm_rules.pixel_kwarg_bytes(version, b)
    parts = {"decoder": decoder_peak_bytes(arch, text_tokens, tp, b) + held}
    if last_stage:
        parts["sampler"] = sampler_peak_bytes(arch, text_tokens, seqs, b) + held
    if held:  # what the text model's count leaves out on a multimodal dummy prompt (fitted: see the data)
        parts = {name: math.ceil(value * fitted("multimodal_text_run_factor")) for name, value in parts.items()}
    if first_stage and arch.vision:
        if engine == "V1":  # the encoder's output is still cached while the text model and sampler run
            parts["encoder_cache"] = encoder_cache_bytes(arch, tokens, b)
            parts = {name: value + (parts["encoder_cache"] if name in ("decoder", "sampler") else 0)
                     for name, value in parts.items()}  # fmt: skip
        parts["vision"] = vision_peak_bytes(arch, images, patches, tp, b, version, engine)
    if engine == "V0" and version < vllm_rules.FREE_MEMORY_PROFILING_BEFORE:  # the allocator's cache counts too
        parts = {name: math.ceil(value * fitted("free_memory_drop_factor")) for name, value in parts.items()}
    return max(parts.values()), images, parts


# ----- non-torch memory and CUDA graphs ---------------------------------------------------------------------


def non_torch_bytes(card: dict, tp: int, pp: int, nodes: int, custom_all_reduce: bool) -> int:
    """Memory outside PyTorch's allocator that grows while profiling, on the rank that decides.

    One GPU: the CUDA context's growth (``non_torch_one_gpu``). Several: NCCL buffers, plus custom
    all-reduce's IPC buffers where the cards talk over NVLink (``non_torch_nvlink``, the worker ranks; PCIe
    cards and TP above 8 fall back to NCCL alone: ``non_torch_pcie``).
    """
    if tp * pp == 1:
        return int(fitted("non_torch_one_gpu") * GiB)
    if card.get("nvlink") and custom_all_reduce and tp <= 8:
        return int(fitted("non_torch_nvlink") * GiB)
    return int(fitted("non_torch_pcie") * GiB)


def cuda_graph_gib(engine: str, enforce_eager: bool) -> float | None:
    """CUDA-graph memory (captured after the KV cache is sized): the median of the logged captures per engine;
    the logs are too few to model it from the architecture. None under ``--enforce-eager``."""
    return None if enforce_eager else fitted(f"cuda_graph_{engine.lower()}")


# ----- the KV cache --------------------------------------------------------------------------------------------


def hybrid_block_size(arch: Architecture, tp: int, kv_dtype: str) -> tuple[int, int]:
    """Qwen3-Next (V1): the attention block grows (in steps of 16 tokens) until one layer's page holds a
    linear-attention layer's state, so every layer's page is the same size: (block_size, page bytes)."""
    per_token_layer = arch.kv_bytes_per_token(kv_dtype, tp, arch.config["full_attention_interval"])
    state = arch.linear_state_bytes(tp)
    block = -(-state // per_token_layer)
    block = -(-block // 16) * 16
    return block, block * per_token_layer


# ----- weights ------------------------------------------------------------------------------------------------


def load_time_bytes(
    arch: Architecture, version: tuple[int, int, int], tp: int, stage_layers: int, b: int, env: dict | None = None
) -> int:
    """What vLLM builds on the GPU while loading beyond the checkpoint's tensors, on one rank of a stage with
    ``stage_layers`` layers, in the model dtype (``b`` bytes): the rotary cos/sin tables
    (:meth:`Architecture.rope_cache_rows`; every stage builds its own) and MLA's copies
    (:func:`vllm_rules.mla_weight_copies`: 0.7.1-0.7.3's absorbed matrices, 0.8's dequantised kv_b_proj). All of
    it counts in the logged "model weights"."""
    rope = sum(positions * width for positions, width in arch.rope_cache_rows())
    copies = vllm_rules.mla_weight_copies(version, env, quantised=arch.quant_method is not None) if arch.mla else None
    per_layer = {"absorbed": arch.mla_absorbed_params(tp), "kv_b": arch.mla_kv_b_params(tp), None: 0}[copies]
    return (rope + stage_layers * per_layer) * b


def predict_startup(case: dict) -> StartupPrediction:
    """What vLLM logs at start-up for the settings in ``case`` (see the module docstring for the keys)."""
    s = _settings(case)
    arch = Architecture(s["config"])
    version = vllm_rules.parse_version(s["vllm_version"] or LATEST_VERSION)
    card = gpu_card(s["gpu"], s["gpu_total_gib"])
    tp, pp = int(s["tp"] or 1), int(s["pp"] or 1)
    env = s["env"] or {}
    engine = vllm_rules.engine_for(
        version, card["compute_capability"], pipeline_parallel=pp, enable_lora=bool(s["enable_lora"]), env=env
    )
    gmu = float(s["gpu_memory_utilization"] or 0.9)
    if not 0 < gmu <= 1:
        raise ValueError(f"gpu_memory_utilization must be in (0, 1], got {gmu}.")
    max_model_len = int(s["max_model_len"] or vllm_rules.default_max_model_len(arch.config))
    act = _dtype(s["dtype"], arch, card["compute_capability"])
    b = 2 if act != "fp32" else 4
    kv_dtype = act if s["kv_cache_dtype"] in (None, "auto") else dtype_name(s["kv_cache_dtype"])
    chunked = vllm_rules.chunked_prefill_on(
        engine, max_model_len, asked=s["enable_chunked_prefill"], multimodal=arch.vision is not None,
        sliding_window=bool(arch.get("sliding_window")) and "Qwen2" not in str(arch.get("architectures")),
        enable_lora=bool(s["enable_lora"]), version=version,
    )  # fmt: skip
    tokens, seqs = vllm_rules.profiling_batch(
        engine, max_model_len, chunked, gpu_memory_gib=card["total_gib"], gpu_name=card["name"],
        multimodal=arch.vision is not None, max_num_batched_tokens=s["max_num_batched_tokens"],
        max_num_seqs=s["max_num_seqs"], version=version,
    )  # fmt: skip
    if engine == "V0" and arch.vision:  # one dummy request per maximal multimodal item set that fits the batch
        seqs = vision_requests(arch, tokens, seqs)
    total = int(card["total_gib"] * GiB)
    usable = int(total * gmu)
    layers = stage_layer_counts(arch.layers, pp)
    weights = [
        w + load_time_bytes(arch, version, tp, n, b, env)
        for w, n in zip(arch.weight_bytes_per_gpu(act, tp, pp), layers, strict=True)
    ]
    non_torch = non_torch_bytes(card, tp, pp, int(s["nodes"] or 1), not s["disable_custom_all_reduce"])
    latent = version >= vllm_rules.MLA_LATENT_CACHE_SINCE
    block_size = int(s["block_size"] or vllm_rules.GPU_BLOCK_SIZE)
    page = None
    if arch.hybrid_linear:
        block_size, page = hybrid_block_size(arch, tp, kv_dtype)

    stages = []
    for stage in range(pp):
        peak, images, parts = activation_peak_bytes(
            arch,
            tokens,
            seqs,
            tp,
            b,
            last_stage=stage == pp - 1,
            first_stage=stage == 0,
            engine=engine,
            version=version,
        )
        kv = usable - weights[stage] - peak - non_torch
        per_token = arch.kv_bytes_per_token(kv_dtype, tp, layers[stage], latent)
        block_bytes = page * layers[stage] if page else block_size * per_token
        blocks = max(kv, 0) // block_bytes
        stages.append(dict(weights=weights[stage], peak=peak, images=images, parts=parts, kv=kv,
                           per_token=per_token, blocks=blocks))  # fmt: skip
    decide = min(range(pp), key=lambda i: (stages[i]["blocks"], stages[i]["kv"]))
    st = stages[decide]
    blocks = min(x["blocks"] for x in stages)
    kv_tokens = blocks * block_size
    outcome, message = _outcome(engine, total, st, non_torch, blocks, block_size, kv_tokens, max_model_len)
    return StartupPrediction(
        outcome=outcome,
        engine=engine,
        version=version,
        gpu_total_gib=card["total_gib"],
        gpu_memory_utilization=gmu,
        usable_gib=usable / GiB,
        model_weights_gib=st["weights"] / GiB,
        activation_peak_gib=st["peak"] / GiB,
        non_torch_gib=non_torch / GiB,
        kv_cache_gib=st["kv"] / GiB,
        gpu_blocks=blocks,
        kv_cache_tokens=kv_tokens,
        cuda_graph_gib=cuda_graph_gib(engine, bool(s["enforce_eager"])),
        block_size=block_size,
        bytes_per_token=st["per_token"],
        max_model_len=max_model_len,
        max_num_batched_tokens=tokens,
        max_num_seqs=seqs,
        chunked_prefill=chunked,
        images_profiled=st["images"],
        message=message,
        terms={name: value / GiB for name, value in st["parts"].items()}
        | {"stage": decide, "card": card["name"], "worker_peak": _worker_peak(st["parts"]) / GiB},
    )


def _worker_peak(parts: dict) -> int:
    """A tensor-parallel rank other than the driver: V0 samples on the driver only (the logits are gathered
    there), so the other ranks' peak leaves the sampler out."""
    return max(value for name, value in parts.items() if name != "sampler")


def _outcome(engine, total, stage, non_torch, blocks, block_size, kv_tokens, max_model_len) -> tuple[str, str]:
    if stage["weights"] > total:
        return "oom", "torch.OutOfMemoryError: CUDA out of memory (loading the weights)"
    if stage["weights"] + stage["peak"] + non_torch > total:
        return "oom", "torch.OutOfMemoryError: CUDA out of memory (in the profiling run)"
    if blocks <= 0 or (engine == "V1" and blocks <= vllm_rules.NULL_BLOCKS):
        return "no_kv_memory", (
            "ValueError: No available memory for the cache blocks. Try increasing `gpu_memory_utilization` "
            "when initializing the engine."
        )
    if engine == "V1":
        usable_tokens = vllm_rules.usable_blocks(blocks) * block_size
        if usable_tokens < max_model_len:
            return "kv_too_small", (
                f"ValueError: To serve at least one request with the model's max seq len ({max_model_len}), "
                f"more KV cache is needed than is available ({usable_tokens} tokens)."
            )
    elif kv_tokens < max_model_len:
        return "kv_too_small", (
            f"ValueError: The model's max seq len ({max_model_len}) is larger than the maximum number of tokens "
            f"that can be stored in KV cache ({kv_tokens}). Try increasing `gpu_memory_utilization` or "
            "decreasing `max_model_len` when initializing the engine."
        )
    return "starts", f"GPU KV cache size: {kv_tokens:,} tokens"


def cases() -> list[dict]:
    """The shipped public start-up logs (settings, config, what was logged)."""
    return reference()["cases"]


@cache
def seed_cases() -> list[dict]:
    """The seeds' A10G start-up logs (reference/vllm_seed_logs.json): scored with the model as fitted on
    :func:`cases`, never fitted to."""
    return json.loads((resources.files("tinyformer") / "reference" / "vllm_seed_logs.json").read_text())["cases"]


# ----- scoring against the logs --------------------------------------------------------------------------------

TERMS = (
    "kv_cache_tokens",
    "kv_cache_gib",
    "model_weights_gib",
    "activation_peak_gib",
    "non_torch_gib",
    "cuda_graph_gib",
)
_LOGGED_KEYS = {  # term -> the record's keys for it, first found wins (per GPU; the driver's line for PP)
    "kv_cache_gib": ("kv_cache_gib", "kv_cache_gib_per_gpu"),
    "model_weights_gib": ("model_load_gb", "model_load_gib", "model_weights_gib", "model_weights_gib_per_gpu",
                          "model_load_gb_per_gpu", "model_weights_gib_stage1"),
    "activation_peak_gib": ("activation_peak_gib",),
    "non_torch_gib": ("non_torch_gib", "non_torch_gib_remote_rank"),
    "cuda_graph_gib": ("cuda_graph_gib", "cuda_graph_gib_per_gpu"),
}  # fmt: skip
_ERROR_TOKENS = re.compile(r"stored in KV cache \((\d+)\)")


def logged_outcome(case: dict) -> str:
    """What the record's log shows: starts, kv_too_small, no_kv_memory (or oom)."""
    logged = case["logged"]
    error = str(logged.get("error", ""))
    if "max seq len" in error or "To serve at least one request" in error:
        return "kv_too_small"
    tokens = logged_terms(case).get("kv_cache_tokens")
    max_model_len = case.get("max_model_len") or vllm_rules.default_max_model_len(case.get("config") or {})
    if error and tokens and max_model_len and 0 < tokens < max_model_len:  # an error cut off after the block count
        return "kv_too_small"
    if logged.get("gpu_blocks") == 0 or (logged.get("kv_cache_gib") or 0) < 0 or "No available memory" in error:
        return "no_kv_memory"
    if "out of memory" in error.lower():
        return "oom"
    return "starts"


def logged_terms(case: dict) -> dict:
    """The terms the record's log states, in the prediction's units (tokens; GiB per GPU)."""
    logged, out = case["logged"], {}
    block = case.get("block_size") or vllm_rules.GPU_BLOCK_SIZE
    if logged.get("kv_cache_tokens") is not None:
        out["kv_cache_tokens"] = logged["kv_cache_tokens"]
    elif logged.get("gpu_blocks") is not None:
        out["kv_cache_tokens"] = logged["gpu_blocks"] * block
    elif _ERROR_TOKENS.search(str(logged.get("error", ""))):
        out["kv_cache_tokens"] = int(_ERROR_TOKENS.search(logged["error"]).group(1))
    for term, keys in _LOGGED_KEYS.items():
        found = [logged[key] for key in keys if logged.get(key) is not None]
        if found:
            out[term] = found[0]
    return out


@dataclass(frozen=True)
class CaseScore:
    case_id: str
    prediction: StartupPrediction
    logged: dict
    logged_outcome: str
    unscored: str | None  # why the case's KV tokens are not held to the targets (None: they are)
    worker_line: bool = False  # the logged profiling line is a non-driver worker's

    def error(self, term: str) -> float | None:
        """(predicted - logged) / |logged| for a term the log states (None if it doesn't, or logged 0).

        A V0 profiling line printed by a worker process is compared with the worker's peak (no sampler)."""
        logged = self.logged.get(term)
        predicted = self.predicted(term)
        if logged is None or predicted is None or logged == 0:
            return None
        return (predicted - logged) / abs(logged)

    def predicted(self, term: str):
        """The prediction for the rank whose line was logged (the driver's, or a worker's without the sampler)."""
        p = self.prediction
        if self.worker_line and p.engine == "V0" and term in ("activation_peak_gib", "kv_cache_gib"):
            spared = p.activation_peak_gib - p.terms["worker_peak"]
            return p.terms["worker_peak"] if term == "activation_peak_gib" else p.kv_cache_gib + spared
        return getattr(p, term)

    @property
    def outcome_right(self) -> bool:
        return self.prediction.outcome == self.logged_outcome


def score(case: dict) -> CaseScore:
    """The prediction for one record's settings next to what its log says."""
    lines = [line for line in case.get("verbatim_lines", []) if "activation peak" in line]
    worker = any("Worker" in line for line in lines) or "one worker's profiling line" in case.get("notes", "")
    return CaseScore(
        case["id"], predict_startup(case), logged_terms(case), logged_outcome(case), case.get("unscored"), worker
    )


def summary(scores: list[CaseScore]) -> dict:
    """The targets' statistics over the scored cases (logged KV tokens, not marked unscored)."""
    held = [s for s in scores if s.unscored is None and "kv_cache_tokens" in s.logged]
    errors = sorted(abs(s.error("kv_cache_tokens") or 0.0) for s in held)
    weights = [s.error("model_weights_gib") for s in scores if s.error("model_weights_gib") is not None]
    mid = len(errors) // 2
    median = (errors[mid] if len(errors) % 2 else (errors[mid - 1] + errors[mid]) / 2) if errors else float("nan")
    return {
        "kv_cases": len(held),
        "kv_median_abs_error": median,
        "kv_within_10pct": sum(e <= 0.10 for e in errors) / len(errors) if errors else float("nan"),
        "outcomes_right": sum(s.outcome_right for s in scores),
        "cases": len(scores),
        "weights_within_2pct": sum(abs(e) <= 0.02 for e in weights),
        "weights_logged": len(weights),
    }
