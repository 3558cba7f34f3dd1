"""A small contrastive fine-tune: teach the model that two sentences about the same topic belong together.

A language model's hidden states keep what predicting the next word needed. In the suite's grammar the
subject's *number* decides the verb's form, but *which* animal it is predicts nothing, so the trained model
has no reason to tell "the fox swims" from "the cat sleeps" and its pooled vectors mostly encode number and
sentence shape. Embedding models are trained for the job instead: pull pairs that belong together closer than
every other pair in the batch (InfoNCE with in-batch negatives). Here the pairs are two sentences on one
topic, drawn from topics the evaluation never uses, so what it learns must generalise.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn.functional as F

from tinyformer import data
from tinyformer.retrieval.collection import topic_sentence
from tinyformer.retrieval.pooling import encode, mean_pool


def contrastive_loss(a: torch.Tensor, b: torch.Tensor, temperature: float = 0.05) -> torch.Tensor:
    """[B, d], [B, d] -> InfoNCE: row i of ``a`` must be most similar to row i of ``b`` among all rows of ``b``."""
    logits = F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).T / temperature  # [B, B]
    return F.cross_entropy(logits, torch.arange(a.shape[0]))


def pooled(model, tokenizer, texts: list[str]) -> torch.Tensor:
    """[B, d] mean-pooled ln_f outputs, with gradients (the training twin of ``pooling.embed``)."""
    ids, mask = encode(tokenizer, texts)
    seen = {}
    handle = model.transformer.ln_f.register_forward_hook(lambda _m, _i, out: seen.__setitem__("h", out))
    try:
        model(ids, padding_mask=mask)
    finally:
        handle.remove()
    return mean_pool(seen["h"], mask)


def contrastive_finetune(
    model,
    tokenizer,
    held_out: list[tuple[str, str]],
    *,
    steps: int = 150,
    batch: int = 32,
    lr: float = 1e-2,
    seed: int = 0,
):
    """A fine-tuned copy of ``model`` (the original is untouched) and its losses. Batches hold pairs of
    sentences on the same topic, one pair per topic, never a topic in ``held_out``."""
    topics = [(n, v) for n in data.NOUNS for v in data.VERBS if (n, v) not in set(held_out)]
    if len(topics) < batch:
        raise ValueError(f"only {len(topics)} training topics for a batch of {batch}: hold out fewer topics.")
    tuned = copy.deepcopy(model).train()
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    optimizer = torch.optim.AdamW(tuned.parameters(), lr=lr, weight_decay=0.0)
    losses = []
    for _ in range(steps):
        chosen = [topics[i] for i in rng.choice(len(topics), size=batch, replace=False)]
        first = [topic_sentence(rng, *t) for t in chosen]
        second = [topic_sentence(rng, *t) for t in chosen]
        loss = contrastive_loss(pooled(tuned, tokenizer, first), pooled(tuned, tokenizer, second))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return tuned.eval(), losses
