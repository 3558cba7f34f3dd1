"""tinyformer: build, train, cache, measure and serve a small GPT-style transformer by hand."""

from tinyformer.config import PRESETS, VLLM_CPU_HEAD_SIZES, HeadSizeWarning, ModelConfig
from tinyformer.data import Corpus, TokenStream
from tinyformer.kv_cache import KVCache
from tinyformer.model import Transformer
from tinyformer.tokenizer import build_tokenizer, load_tokenizer

__all__ = [
    "PRESETS",
    "VLLM_CPU_HEAD_SIZES",
    "Corpus",
    "HeadSizeWarning",
    "KVCache",
    "ModelConfig",
    "TokenStream",
    "Transformer",
    "build_tokenizer",
    "load_tokenizer",
]
