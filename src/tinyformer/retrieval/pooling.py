"""One vector per text from the model's last hidden states: mean pooling over the real tokens, or the last
real token's vector; then unit length, so a dot product is a cosine.

The hidden states are the output of the final layer norm ``ln_f`` (what the LM head reads), which is also
what vLLM's pooling runner pools for a GPT-2 model served with ``--convert embed``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tinyformer.model import eval_mode
from tinyformer.tokenizer import PAD

POOLINGS = ("mean", "last")


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[B, T, d] hidden states, [B, T] mask (1 = real token) -> [B, d]: the average over real tokens only."""
    weights = mask.to(hidden.dtype).unsqueeze(-1)  # [B, T, 1], padding counts 0
    return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1)  # [B, d]


def last_token_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[B, T, d], [B, T] right-padded mask -> [B, d]: each row's last real token (causal attention: the only
    position that has seen the whole text)."""
    last = mask.long().sum(dim=1) - 1  # [B], index of the last real token
    return hidden[torch.arange(hidden.shape[0]), last]  # [B, d]


def pool(hidden: torch.Tensor, mask: torch.Tensor, pooling: str = "mean") -> torch.Tensor:
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}.")
    return mean_pool(hidden, mask) if pooling == "mean" else last_token_pool(hidden, mask)


def hidden_states(model, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[B, T] right-padded ids and mask -> [B, T, d]: the output of ``ln_f`` (read with a forward hook, so the
    model's own forward runs unchanged)."""
    seen = {}
    handle = model.transformer.ln_f.register_forward_hook(lambda _m, _i, out: seen.__setitem__("h", out))
    try:
        with eval_mode(model), torch.no_grad():
            model(ids.to(model.device), padding_mask=mask.to(model.device))
    finally:
        handle.remove()
    return seen["h"].cpu()


def encode(tokenizer, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Texts -> right-padded ids [B, T] and mask [B, T] (no special tokens, as vLLM's /v1/embeddings)."""
    if isinstance(texts, str) or not texts:
        raise ValueError("give a non-empty list of texts (wrap a single text in a list).")
    rows = [tokenizer.encode(t, add_special_tokens=False) for t in texts]
    if any(len(r) == 0 for r in rows):
        raise ValueError("a text encodes to no tokens; every text needs at least one word.")
    width, pad = max(map(len, rows)), tokenizer.convert_tokens_to_ids(PAD)
    ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows])  # [B, T]
    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])  # [B, T]
    return ids, mask


def embed(model, tokenizer, texts: list[str], pooling: str = "mean", batch_size: int = 64) -> torch.Tensor:
    """[N, d] unit vectors for ``texts``: forward pass, pool, L2-normalise."""
    out = []
    for start in range(0, len(texts), batch_size):
        ids, mask = encode(tokenizer, texts[start : start + batch_size])
        out.append(F.normalize(pool(hidden_states(model, ids, mask), mask, pooling), dim=-1))
    return torch.cat(out)  # [N, d]
