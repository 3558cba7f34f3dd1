"""Where the memory goes (lesson 06): byte formulas, real models and GPUs, the serving planner, measurements.

formulas.py    bytes of weights, attention scores, KV per token, activations; dtype sizes; format_bytes
catalogue.py   real models and GPUs (ModelSpec, GPU, the shipped tables), weights by dtype incl. quantised
planner.py     plan_serving: what vLLM would do with a model on a GPU (or the CPU backend), and fixes
vision.py      vision-language models: image tokens per image, vLLM's profiling with maximal dummy images
vision_logs.py the public VLM start-up logs replayed through the planner (plan_case)
architecture.py  a config.json's parameters, weights per GPU (TP/PP, quantised, MoE, MLA) and KV bytes per token
startup.py     predict_startup: a vLLM GPU start-up term by term, per release, scored against public logs
measure.py     peak_bytes (profiler / CUDA counters), naive vs fused attention, storage_bytes

vLLM's own rules (block sizes, the null block, whole-block rounding, the capacity line, its refusals) live
in :mod:`tinyformer.vllm_rules`; the names below that come from there are re-exported for lesson 06.

``from tinyformer import memory`` then ``memory.kv_bytes_per_token(...)``: names are imported on first
use from the module that owns them (the table below), so this file is also the map of where each lives.
"""

from __future__ import annotations

from tinyformer.lazy import lazy_names

_HOMES = {
    "tinyformer.memory.formulas": (
        "DTYPE_BYTES",
        "GiB",
        "MiB",
        "attention_scores_bytes",
        "dtype_bytes",
        "dtype_name",
        "format_bytes",
        "forward_activation_bytes",
        "kv_bytes_per_token",
        "kv_cache_bytes",
        "weight_bytes",
    ),
    "tinyformer.memory.catalogue": (
        "GPU",
        "QUANTISED",
        "ModelSpec",
        "find_model",
        "gpus",
        "lookup",
        "model_weight_bytes",
        "real_models",
        "vision_models",
    ),
    "tinyformer.memory.planner": (
        "ENGINES",
        "Engine",
        "FRAMEWORK_OVERHEAD_BYTES",
        "FRAMEWORK_OVERHEAD_TP_BYTES",
        "MAX_GPU_MEMORY_UTILIZATION",
        "Fix",
        "ServingPlan",
        "V0_ACTIVATION_FACTOR",
        "batch_limits",
        "cheapest_fix",
        "default_batch_limits",
        "fixes",
        "plan_serving",
        "serving_activation_bytes",
    ),
    "tinyformer.memory.startup": ("StartupPrediction", "predict_startup"),
    "tinyformer.memory.architecture": ("Architecture",),
    "tinyformer.memory.vision": (
        "VisionSpec",
        "image_tokens",
        "images_in_kv_cache",
        "images_per_request",
        "profile_images",
        "text_positions_per_image",
        "vision_activation_bytes",
    ),
    "tinyformer.memory.measure": (
        "ATTENTION_IMPLEMENTATIONS",
        "TORCH_DTYPES",
        "Measurement",
        "attention_inputs",
        "fused_attention",
        "kv_cache_formula_bytes",
        "measure_attention",
        "naive_attention",
        "peak_bytes",
        "storage_bytes",
    ),
    "tinyformer.vllm_rules": (
        "CPU_BLOCK_SIZE",
        "GPU_BLOCK_SIZE",
        "KVCapacity",
        "kv_cache_blocks",
        "kv_cache_tokens",
        "vllm_kv_capacity",
    ),
}
__getattr__, __dir__, __all__ = lazy_names(__name__, _HOMES)
