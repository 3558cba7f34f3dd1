"""Model configuration: one dataclass, a few named presets, and validation with clear errors.

Two architectures share it: ``arch="gpt2"`` (GPT-2 of 2019: learned position table, LayerNorm, GELU MLP, biases)
and ``arch="llama"`` (Llama/Qwen/Mistral: rotary positions, RMSNorm, SwiGLU MLP, no biases), each with
``n_kv_head`` key/value heads shared by groups of ``n_head / n_kv_head`` query heads (grouped-query attention;
``n_kv_head=1`` is multi-query attention, ``n_kv_head=n_head`` plain multi-head attention)."""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass

from tinyformer.vllm_rules import CPU_HEAD_SIZES

# Head sizes that vLLM's CPU attention kernel can run. Any other head size starts a server fine and then
# kills the engine on the first request. (The fact lives in tinyformer.vllm_rules.)
VLLM_CPU_HEAD_SIZES = CPU_HEAD_SIZES


class HeadSizeWarning(UserWarning):
    """The head size works in PyTorch but vLLM's CPU attention kernel cannot run it."""


ARCHS = ("gpt2", "llama")
SWIGLU_MULTIPLE = 8  # SwiGLU widths are rounded up to a multiple of this (Llama rounds to 256 at full size)

# Architecture sizes only: the vocabulary size comes from the tokenizer.
PRESETS: dict[str, dict[str, int]] = {
    # ~0.1M parameters: trains to the corpus floor in under a minute on 2 CPU cores.
    "nano": dict(n_positions=128, n_embd=64, n_layer=2, n_head=2),
    # ~0.4M parameters: the model served by vLLM in the serving lessons.
    "micro": dict(n_positions=256, n_embd=128, n_layer=2, n_head=4),
    # ~0.02M parameters, one layer: the draft model of speculative decoding (lesson 16), trained as a llama on
    # nano's windows so it shares nano's tokenizer and position range; head_dim 32 runs on vLLM's CPU kernel.
    "pico": dict(n_positions=128, n_embd=32, n_layer=1, n_head=1),
}


@dataclass(frozen=True)
class ModelConfig:
    """Sizes of a GPT-2 or Llama style transformer (names follow Hugging Face's GPT2Config)."""

    vocab_size: int
    n_positions: int  # rows of the position table = the longest sequence the model can read
    n_embd: int  # d, the width of every token vector
    n_layer: int
    n_head: int
    dropout: float = 0.0
    layer_norm_epsilon: float = 1e-5  # LayerNorm's eps (gpt2), RMSNorm's eps (llama)
    arch: str = "gpt2"  # "gpt2" or "llama"
    n_kv_head: int | None = None  # key/value heads; None: one per query head (n_head)
    tie_word_embeddings: bool = True  # lm_head reads the token table (llama may have its own head)

    def __post_init__(self) -> None:
        if self.n_kv_head is None:
            object.__setattr__(self, "n_kv_head", self.n_head)  # frozen: set the default once, here
        if self.arch not in ARCHS:
            raise ValueError(f"unknown arch {self.arch!r}; choose one of {list(ARCHS)}.")
        for name in ("vocab_size", "n_positions", "n_embd", "n_layer", "n_head", "n_kv_head"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"ModelConfig.{name} must be a positive integer, got {value!r}.")
        self._check_arch_fields()
        if self.n_embd % self.n_head != 0:
            raise ValueError(
                f"n_embd={self.n_embd} is not divisible by n_head={self.n_head}: each head gets "
                f"n_embd / n_head dimensions. Pick n_head from the divisors of {self.n_embd}."
            )
        if not _is_number(self.dropout) or not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout!r}: a number, 0 = off.")
        if not _is_number(self.layer_norm_epsilon) or not 0.0 < self.layer_norm_epsilon < 1.0:
            raise ValueError(
                f"layer_norm_epsilon must be a small number above 0 (GPT-2: 1e-5), got {self.layer_norm_epsilon!r}."
            )
        if self.head_dim not in VLLM_CPU_HEAD_SIZES:
            warnings.warn(self.vllm_head_size_message(), HeadSizeWarning, stacklevel=3)

    def _check_arch_fields(self) -> None:
        if self.n_head % self.n_kv_head != 0:
            divisors = [k for k in range(1, self.n_head + 1) if self.n_head % k == 0]
            raise ValueError(
                f"n_head={self.n_head} is not divisible by n_kv_head={self.n_kv_head}: each key/value head serves "
                f"a group of n_head / n_kv_head query heads. Pick n_kv_head from {divisors} (1 = multi-query)."
            )
        if self.arch == "gpt2" and self.n_kv_head != self.n_head:
            raise ValueError(
                f"arch='gpt2' has one key/value head per query head (n_kv_head={self.n_head}), got "
                f"n_kv_head={self.n_kv_head}: grouped-query attention is part of arch='llama'."
            )
        if not isinstance(self.tie_word_embeddings, bool):
            raise ValueError(f"tie_word_embeddings must be True or False, got {self.tie_word_embeddings!r}.")
        if self.arch == "gpt2" and not self.tie_word_embeddings:
            raise ValueError("arch='gpt2' reads its head from the token table (tie_word_embeddings=True).")

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def group_size(self) -> int:
        """Query heads that share one key/value head: n_head / n_kv_head (1 = multi-head attention)."""
        return self.n_head // self.n_kv_head

    @property
    def mlp_hidden(self) -> int:
        """The MLP's inner width: 4 x d for GPT-2's GELU MLP; 8/3 x d (rounded up) for SwiGLU, whose three
        matrices then hold about as many numbers as GELU's two (3 x d x 8d/3 = 2 x d x 4d)."""
        if self.arch == "gpt2":
            return 4 * self.n_embd
        return SWIGLU_MULTIPLE * math.ceil(8 * self.n_embd / 3 / SWIGLU_MULTIPLE)

    def vllm_head_size_message(self) -> str:
        good = [h for h in (32, 64, 128) if self.n_embd % h == 0]
        fix = f"e.g. n_head={self.n_embd // good[0]}" if good else "change n_embd to a multiple of 32"
        return (
            f"head size n_embd/n_head = {self.n_embd}/{self.n_head} = {self.head_dim} is not one "
            f"vLLM's CPU attention supports {VLLM_CPU_HEAD_SIZES}; this model trains fine in "
            f"PyTorch but cannot be served by vLLM on CPU ({fix})."
        )

    def check_vllm_head_size(self) -> None:
        """Raise a ValueError naming the fix when vLLM's CPU kernel cannot run this head size."""
        if self.head_dim not in VLLM_CPU_HEAD_SIZES:
            raise ValueError(self.vllm_head_size_message())

    @classmethod
    def preset(cls, name: str, *, vocab_size: int, **overrides) -> ModelConfig:
        """A named preset (``"nano"`` or ``"micro"``) sized for a vocabulary of ``vocab_size``; ``overrides``
        change any field, e.g. ``arch="llama", n_kv_head=1``."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}.")
        return cls(vocab_size=vocab_size, **{**PRESETS[name], **overrides})

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        if not isinstance(d, dict):
            raise ValueError(f"a ModelConfig is read from a dict of its fields, got {type(d).__name__}.")
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown ModelConfig fields {sorted(unknown)}; is this a tinyformer config?")
        required = ("vocab_size", "n_positions", "n_embd", "n_layer", "n_head")
        missing = [name for name in required if name not in d]
        if missing:
            raise ValueError(f"the config lacks {missing}; it needs {list(required)} (see ModelConfig.preset).")
        return cls(**d)


# Hugging Face's config.json names for ModelConfig's sizes: the one place the two spellings meet. LlamaConfig, OPTConfig
# and CLIPVisionConfig are written with them (tinyformer.export), an export's config.json is read back with them
# (serving.budget), and ModelSpec (memory.catalogue) follows them where its names are Hugging Face's. GPT2Config keeps
# GPT-2's own names, which are ModelConfig's.
HF_NAMES = {
    "vocab_size": "vocab_size",
    "n_positions": "max_position_embeddings",
    "n_embd": "hidden_size",
    "n_layer": "num_hidden_layers",
    "n_head": "num_attention_heads",
    "n_kv_head": "num_key_value_heads",
    "mlp_hidden": "intermediate_size",
    "head_dim": "head_dim",
}


def hf_sizes(config, *fields: str) -> dict[str, int]:
    """``config``'s sizes under Hugging Face's names: the ``fields`` named (all of HF_NAMES by default). ``config``
    is a ModelConfig, or anything with its attribute names (vision.VisionConfig)."""
    return {HF_NAMES[field]: getattr(config, field) for field in fields or HF_NAMES}


def sizes_from_hf(hf: dict, *fields: str) -> dict[str, int]:
    """The inverse: ModelConfig keyword arguments for ``fields``, read from a config.json dict ``hf``."""
    return {field: hf[HF_NAMES[field]] for field in fields}


def _is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
