"""Small seeded tinyformer models for the checkers: the package's own modules give the expected answers."""

from __future__ import annotations

import warnings

import torch

from tinyformer.config import HeadSizeWarning, ModelConfig
from tinyformer.model import Transformer


def tiny_model(*, seed: int, vocab_size: int = 23, n_positions: int = 16, n_embd: int = 12, n_head: int = 3):
    """A freshly initialised Transformer (eval mode) with random, non-trivial weights.

    Small head sizes are fine here: these models are never served by vLLM, so the head-size warning
    would only be noise in the learner's notebook.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", HeadSizeWarning)
        config = ModelConfig(vocab_size=vocab_size, n_positions=n_positions, n_embd=n_embd, n_layer=1, n_head=n_head)
    torch.manual_seed(seed)
    model = Transformer(config).eval()
    with torch.no_grad():  # GPT-2's init (std 0.02, zero biases) makes too many answers look alike
        for p in model.parameters():
            p.normal_(0.0, 0.5)
    return model


def random_ids(model: Transformer, batch: int, length: int, seed: int) -> torch.Tensor:
    """Token ids [batch, length] drawn from the model's vocabulary."""
    return torch.randint(0, model.config.vocab_size, (batch, length), generator=torch.Generator().manual_seed(seed))
