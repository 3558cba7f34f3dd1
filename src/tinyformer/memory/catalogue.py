"""Real models and GPUs: the shipped reference tables (``tinyformer/reference/*.json``) and their sizes.

:class:`ModelSpec` holds the sizes that decide a decoder-only transformer's memory (names follow Hugging
Face configs) and counts its parameters; :class:`GPU` a card's memory and compute capability.
:func:`real_models` and :func:`gpus` read the tables; :func:`model_weight_bytes` prices a model's weights
in a dtype, quantised ones included. The planner (:mod:`tinyformer.memory.planner`) combines them.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, fields
from functools import cache
from importlib import resources

from tinyformer.config import ModelConfig, hf_sizes, sizes_from_hf
from tinyformer.memory.formulas import MiB, dtype_name, kv_bytes_per_token, weight_bytes
from tinyformer.memory.vision import VisionSpec

DESCRIPTIVE_FIELDS = ("name", "hf_id", "notes", "n_params_published")  # words about a model, not its sizes


@dataclass(frozen=True)
class ModelSpec:
    """The sizes that decide a decoder-only transformer's memory (names follow Hugging Face configs)."""

    name: str
    n_layer: int
    hidden_size: int
    n_head: int
    n_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    max_position_embeddings: int
    tie_word_embeddings: bool = False
    mlp: str = "gated"  # "gelu": up + down; "gated": gate + up + down (SwiGLU)
    norm: str = "rmsnorm"  # "layernorm" has a bias, "rmsnorm" only a scale
    learned_positions: bool = False  # GPT-2's wpe table (rotary models have none)
    qkv_bias: bool = False
    linear_bias: bool = False  # GPT-2: every Linear has a bias
    kv_layers: int | None = None  # layers holding KV per token (default all)
    sliding_window: int | None = None
    extra_params: int = 0
    n_params_published: int | None = None
    hf_id: str = ""
    notes: str = ""
    vision: VisionSpec | None = None  # a vision-language model's encoder (tinyformer.memory.vision)

    @property
    def kv_layer_count(self) -> int:
        return self.n_layer if self.kv_layers is None else self.kv_layers

    @property
    def embedding_params(self) -> int:
        """Token table, position table (if learned) and an untied LM head: [V, d] matrices."""
        tables = self.vocab_size * self.hidden_size
        if self.learned_positions:
            tables += self.max_position_embeddings * self.hidden_size
        if not self.tie_word_embeddings:
            tables += self.vocab_size * self.hidden_size
        return tables

    @property
    def layer_params(self) -> int:
        """One transformer block: Q, K, V, O projections, the MLP, two norms (and biases)."""
        d, q, kv = self.hidden_size, self.n_head * self.head_dim, self.n_kv_heads * self.head_dim
        attention = d * q + 2 * d * kv + q * d
        if self.qkv_bias or self.linear_bias:
            attention += q + 2 * kv
        if self.linear_bias:
            attention += d
        n_mats = 3 if self.mlp == "gated" else 2
        mlp = n_mats * d * self.intermediate_size
        if self.linear_bias:
            mlp += (n_mats - 1) * self.intermediate_size + d
        return attention + mlp + 2 * self.norm_params

    @property
    def norm_params(self) -> int:
        return 2 * self.hidden_size if self.norm == "layernorm" else self.hidden_size

    @property
    def text_params(self) -> int:
        """The language model's parameters, the tied LM head counted once."""
        return self.embedding_params + self.n_layer * self.layer_params + self.norm_params + self.extra_params

    @property
    def n_params(self) -> int:
        """All parameters: the language model and, for a vision-language model, its vision encoder."""
        return self.text_params + (self.vision.n_params if self.vision else 0)

    def kv_bytes_per_token(self, dtype="bf16", tensor_parallel_size: int = 1) -> int:
        """KV bytes one token adds on one rank (the one formula, :func:`.formulas.kv_bytes_per_token`)."""
        return kv_bytes_per_token(self.kv_layer_count, self.n_kv_heads, self.head_dim, dtype, tensor_parallel_size)

    @classmethod
    def from_tinyformer(cls, config, name: str = "tinyformer") -> ModelSpec:
        """The spec of a ``tinyformer.ModelConfig`` (GPT-2 or Llama architecture)."""
        gpt2 = config.arch == "gpt2"
        return cls(
            name=name,
            n_layer=config.n_layer,
            n_head=config.n_head,
            n_kv_heads=config.n_kv_head,
            **hf_sizes(config, "n_embd", "head_dim", "mlp_hidden", "vocab_size", "n_positions"),
            tie_word_embeddings=config.tie_word_embeddings,
            mlp="gelu" if gpt2 else "gated",
            norm="layernorm" if gpt2 else "rmsnorm",
            learned_positions=gpt2,
            qkv_bias=gpt2,
            linear_bias=gpt2,
            notes="the model this course builds and trains",
        )

    def to_tinyformer(self) -> ModelConfig:
        """The ``tinyformer.ModelConfig`` of a GPT-2-shaped spec, e.g. ``find_model("openai-community/gpt2")``: a
        ``Transformer`` built from it holds this spec's parameters (random weights: only the sizes are copied)."""
        sizes = sizes_from_hf(vars(self), "vocab_size", "n_positions", "n_embd")  # config.HF_NAMES: one mapping
        config = ModelConfig(n_layer=self.n_layer, n_head=self.n_head, **sizes)
        as_built = ModelSpec.from_tinyformer(config)
        differ = [
            f"{field.name}={getattr(self, field.name)!r} (tinyformer's GPT-2: {getattr(as_built, field.name)!r})"
            for field in fields(self)
            if field.name not in DESCRIPTIVE_FIELDS and getattr(self, field.name) != getattr(as_built, field.name)
        ]
        if differ:
            raise ValueError(
                f"{self.name} is not GPT-2-shaped, so tinyformer's GPT-2 cannot hold it: {', '.join(differ)}. "
                "Pick a GPT-2 model, e.g. find_model('openai-community/gpt2')."
            )
        return config


@dataclass(frozen=True)
class GPU:
    name: str
    memory_bytes: int  # total as nvidia-smi / torch.cuda.mem_get_info report it
    compute_capability: float
    host_link_gb_s: float = 32.0  # one-way PCIe bandwidth to the CPU (for CPU offload)
    notes: str = ""

    @property
    def supports_bf16(self) -> bool:
        return self.compute_capability >= 8.0

    @property
    def supports_fp8(self) -> bool:
        return self.compute_capability >= 8.0


def _reference(name: str) -> dict:
    return json.loads((resources.files("tinyformer") / "reference" / name).read_text())


@cache
def real_models() -> dict[str, ModelSpec]:
    """The shipped table of real model configurations, by name."""
    specs = {}
    for row in _reference("models.json")["models"]:
        row = dict(row)
        row["n_params_published"] = row.pop("n_params")
        specs[row["name"]] = ModelSpec(**row)
    return specs


@cache
def gpus() -> dict[str, GPU]:
    """The shipped table of NVIDIA GPUs, by name."""
    return {
        row["name"]: GPU(
            name=row["name"],
            memory_bytes=row["memory_mib"] * MiB,
            compute_capability=row["compute_capability"],
            host_link_gb_s=row["host_link_gb_s"],
            notes=row.get("notes", ""),
        )
        for row in _reference("gpus.json")["gpus"]
    }


@cache
def vision_models() -> dict[str, ModelSpec]:
    """The shipped vision-language models (reference/vlm_models.json), by Hugging Face id."""
    specs = {}
    for row in _reference("vlm_models.json")["models"]:
        vision = dict(row["vision"])
        vision["profile_image"] = tuple(vision["profile_image"])
        spec = ModelSpec(
            name=row["name"],
            hf_id=row["hf_id"],
            notes=row["notes"],
            n_params_published=row["n_params"],
            vision=VisionSpec(**vision),
            **row["text"],
        )
        specs[spec.hf_id] = spec
    return specs


def find_model(name: str) -> ModelSpec:
    """A shipped model by Hugging Face id (vision-language models first) or by its table name."""
    by_id = {spec.hf_id: spec for spec in real_models().values()} | vision_models()
    if name in by_id:
        return by_id[name]
    if name in real_models():
        return real_models()[name]
    raise ValueError(
        f"unknown model {name!r}; choose one of the Hugging Face ids {sorted(by_id)} or the names "
        f"{sorted(real_models())}."
    )


def lookup(table: dict, name: str, what: str):
    if name not in table:
        raise ValueError(f"unknown {what} {name!r}; choose one of {sorted(table)}.")
    return table[name]


QUANTISED = ("fp8", "int8", "int4")


def model_weight_bytes(spec: ModelSpec, dtype="bf16") -> int:
    """Bytes of the model's weights in ``dtype``.

    Quantised checkpoints (fp8, int8, int4) quantise the transformer blocks' matrices; the embedding
    tables, LM head, norms (and a vision encoder) stay in 16 bits, as AWQ/GPTQ/FP8 checkpoints ship them.
    The quantised matrices carry their scales and zero points too (lesson 11 measures them): int4 in groups
    of 128 takes 0.5 + 2.5/128 = 0.52 bytes per weight, not the idealised 0.5.
    """
    name = dtype_name(dtype)
    if name not in QUANTISED:
        return weight_bytes(spec.n_params, name)
    from tinyformer.quantize import checkpoint_bytes_per_parameter

    kept_16bit = spec.embedding_params + (2 * spec.n_layer + 1) * spec.norm_params + spec.extra_params
    kept_16bit += spec.vision.n_params if spec.vision else 0  # vision encoders ship unquantised
    quantised = spec.n_params - kept_16bit
    return math.ceil(quantised * checkpoint_bytes_per_parameter(name, spec.hidden_size)) + weight_bytes(
        kept_16bit, "bf16"
    )
