"""tinyformer: build, train, cache, measure and serve a small GPT-style transformer by hand."""

from tinyformer.config import PRESETS, VLLM_CPU_HEAD_SIZES, HeadSizeWarning, ModelConfig
from tinyformer.data import Corpus, TokenStream
from tinyformer.export import export_hf
from tinyformer.generate import generate, generate_batch
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
    "export_hf",
    "generate",
    "generate_batch",
    "load_tokenizer",
]
