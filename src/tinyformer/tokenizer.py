"""A word-level tokenizer built with Hugging Face `tokenizers`, saved as a PreTrainedTokenizerFast.

Word-level keeps the lessons readable: one word = one token = one row of the embedding table.
"""

from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from tinyformer import data

EOS, PAD, UNK = "<|endoftext|>", "<pad>", "<unk>"
SPECIAL_TOKENS = [EOS, PAD, UNK]


def build_tokenizer(words: list[str] | None = None, model_max_length: int = 256) -> PreTrainedTokenizerFast:
    """A tokenizer whose vocabulary is the special tokens followed by ``words`` (default: the
    shipped corpus's vocabulary), in that fixed order, so ids are the same on every machine."""
    words = data.vocabulary() if words is None else list(words)
    reserved = sorted(set(words) & set(SPECIAL_TOKENS))
    if reserved:
        raise ValueError(f"{reserved} are special tokens added by the tokenizer itself; remove them from words.")
    duplicates = sorted({w for w in words if words.count(w) > 1})
    if duplicates:
        raise ValueError(f"the vocabulary repeats {duplicates}; give each word once.")
    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS + words)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=EOS,
        bos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        model_max_length=model_max_length,
    )


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerFast:
    path = Path(path)
    if not (path / "tokenizer.json").is_file():
        raise FileNotFoundError(f"no tokenizer.json in {path}; save one with tokenizer.save_pretrained({str(path)!r}).")
    return PreTrainedTokenizerFast.from_pretrained(str(path))
