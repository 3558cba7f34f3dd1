"""Checkpoints: weights, config, tokenizer and training notes in one file, written atomically.

Training a preset and the lessons' "load what lesson 04 saved, or train it now" live in :mod:`tinyformer.train`.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from tokenizers import Tokenizer
from transformers import PreTrainedTokenizerFast

from tinyformer.config import ModelConfig
from tinyformer.model import Transformer
from tinyformer.paths import atomic_file

FORMAT = "tinyformer-checkpoint-v1"


def save_checkpoint(path: str | Path, model: Transformer, tokenizer: PreTrainedTokenizerFast, **meta) -> Path:
    """Write ``path`` atomically: a temp file in the same folder, then a rename, so a crash mid-write
    never leaves a truncated checkpoint under the real name."""
    payload = {
        "format": FORMAT,
        "config": model.config.to_dict(),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "tokenizer": tokenizer.backend_tokenizer.to_str(),
        "special_tokens": dict(tokenizer.special_tokens_map),
        "meta": meta,
    }
    return save_atomically(path, payload)


def save_atomically(path: str | Path, payload: dict) -> Path:
    """``torch.save(payload)`` to ``path`` through a temp file in the same folder and a rename."""
    path = Path(path)
    with atomic_file(path) as tmp:
        with open(tmp, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
    return path


def load_checkpoint(path: str | Path) -> tuple[Transformer, PreTrainedTokenizerFast, dict]:
    """(model in eval mode, tokenizer, meta). Raises a ValueError that says what is wrong with
    a missing, truncated, foreign or mismatched file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}; train one with `tinyformer train --out {path}`.")
    payload = load_payload(path, FORMAT, ("config", "state_dict", "tokenizer", "special_tokens", "meta"))
    try:
        config = ModelConfig.from_dict(payload["config"])
    except ValueError as e:
        raise ValueError(f"checkpoint {path} holds a bad config: {e} Train it again.") from e
    model = Transformer(config)
    try:
        model.load_state_dict(payload["state_dict"])
    except RuntimeError as e:
        raise ValueError(
            f"checkpoint {path} does not match its own config {config}: {e}. "
            "The file was edited or mixed from two models; train it again."
        ) from e
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(payload["tokenizer"]),
        model_max_length=config.n_positions,
        **payload["special_tokens"],
    )
    if len(tokenizer) != config.vocab_size:
        raise ValueError(
            f"checkpoint {path}: tokenizer has {len(tokenizer)} tokens but the model's vocab_size is "
            f"{config.vocab_size}; the two must come from the same training run."
        )
    return model.eval(), tokenizer, payload["meta"]


def load_payload(path: Path, format: str, keys: tuple[str, ...]) -> dict:
    """The dict ``save_atomically`` wrote to ``path``; a ValueError if it is damaged, foreign or incomplete."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(
            f"checkpoint {path} is truncated or corrupted ({type(e).__name__}: {e}). "
            "Delete it and train again (save_checkpoint writes atomically, so it did not leave this file half-written)."
        ) from e
    if not isinstance(payload, dict) or payload.get("format") != format:
        raise ValueError(f"{path} is not a tinyformer checkpoint (expected format {format!r}).")
    missing = [k for k in keys if k not in payload]
    if missing:
        raise ValueError(f"checkpoint {path} lacks {missing}; it was not written by tinyformer. Train it again.")
    return payload
