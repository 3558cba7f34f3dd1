"""Generating text one token at a time, with and without the KV cache.

Without a cache, every step runs the model over the whole sequence so far and recomputes the keys
and values of tokens it has already seen. With a cache, the prompt is run once (prefill) and each
later step feeds only the newest token (decode), which attends over the cached keys and values.
Both give the same tokens: the cache only removes repeated work.

A sequence may hold at most ``n_positions`` tokens (prompt + generated), the rows of the position
table; this is the same rule as vLLM's ``max_model_len``. Asking for more raises a ValueError, or,
with ``on_limit="truncate"``, generation stops when the sequence reaches ``n_positions`` tokens.

:func:`time_cache_speedup` times greedy generation both ways on the same prompts (lesson 05 and
``benchmarks/kv_cache_speedup.py`` read their ratios from it).
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

import torch

from tinyformer.kv_cache import KVCache
from tinyformer.model import Transformer, eval_mode

PAD_ID = 0  # what left padding is filled with; any valid id works, padded keys are masked out


@dataclass
class Generation:
    """What one call to generate produced, per row of the batch."""

    prompts: list[list[int]]
    tokens: list[list[int]]  # new tokens per row, up to and including an EOS token if one was hit
    logits: torch.Tensor  # [B, steps, V], the logits each new token was chosen from
    cache: KVCache | None  # the request's KV cache after the last step (None without the cache)
    stop_reason: str  # "max_new_tokens", "eos" or "n_positions" (truncated at the position limit)

    @property
    def sequences(self) -> list[list[int]]:
        """Prompt followed by the generated tokens, per row."""
        return [prompt + new for prompt, new in zip(self.prompts, self.tokens, strict=True)]


def generate(
    model: Transformer,
    prompt_ids,
    max_new_tokens: int,
    *,
    temperature: float = 0.0,
    top_k: int | None = None,
    seed: int | None = None,
    use_cache: bool = True,
    eos_token_id: int | None = None,
    on_limit: str = "error",
    on_step: Callable[[int, KVCache | None], None] | None = None,
) -> Generation:
    """Continue ``prompt_ids`` (a list of ints, a 1-D tensor, or a 2-D [B, T] tensor) by up to
    ``max_new_tokens`` tokens.

    temperature: 0 picks the most likely token (greedy); above 0 samples from softmax(logits / temperature),
        restricted to the ``top_k`` most likely tokens when given. ``seed`` makes sampling reproducible.
    use_cache: prefill + one token per step with a KVCache (True), or recompute everything each step (False).
    eos_token_id: a row stops growing once it emits this token; generation ends when every row has.
    on_limit: what to do when prompt + max_new_tokens exceeds n_positions: "error" (ValueError) or
        "truncate" (stop when the sequence fills the position table; ``stop_reason`` says so).
    on_step: called as on_step(step, cache) after each new token, e.g. to record the cache's size.
    """
    prompts = _as_prompts(prompt_ids)
    steps = tokens_that_fit(model.config.n_positions, prompts, max_new_tokens, on_limit)
    _check_sampling(temperature, top_k)
    device = model.device
    generator = torch.Generator(device=device).manual_seed(seed) if seed is not None else None
    choose = partial(next_token, temperature=temperature, top_k=top_k, generator=generator)
    cache = KVCache(model.config.n_layer) if use_cache else None
    with eval_mode(model):
        new_ids, step_logits, finished = _decode(
            model, left_pad(prompts, device), steps, choose, cache, eos_token_id, on_step
        )
    return Generation(
        prompts=prompts,
        tokens=_cut_after_eos(new_ids, eos_token_id),
        logits=step_logits,
        cache=cache,
        stop_reason="eos" if finished else ("n_positions" if steps < max_new_tokens else "max_new_tokens"),
    )


def generate_batch(model: Transformer, prompts: Sequence[Sequence[int]], max_new_tokens: int, **options) -> Generation:
    """Generate for prompts of different lengths in one batch; each row gets exactly what it gets alone.

    Rows are LEFT-padded to the longest prompt so every row's newest token is in the last column. A
    padding mask hides the pad keys from attention, and position ids restart at 0 on each row's first
    real token, so a row sees the same tokens at the same positions as it would on its own.
    Takes the same keyword options as :func:`generate`.
    """
    if isinstance(prompts, torch.Tensor) or not prompts or not all(_is_sequence(p) for p in prompts):
        raise ValueError("prompts must be a non-empty list of token-id lists, e.g. [[5, 6, 7], [8, 9]].")
    return generate(model, [_as_id_list(p) for p in prompts], max_new_tokens, **options)


@torch.inference_mode()
def _decode(model, padded, steps, choose, cache, eos_token_id, on_step):
    """The generation loop: returns new ids [B, steps'], their logits [B, steps', V], and whether all rows hit EOS."""
    ids, mask = padded  # [B, W] each; mask True on real tokens
    positions = (mask.cumsum(dim=1) - 1).clamp(min=0)  # [B, W], 0 at each row's first real token
    if mask.all():
        mask = None  # equal lengths: nothing to hide
    finished = torch.zeros(ids.shape[0], dtype=torch.bool, device=ids.device)  # [B], rows that emitted EOS
    new_ids, step_logits = [], []
    step_ids, step_positions = ids, positions  # the first step (prefill) feeds the whole prompt
    for step in range(steps):
        if cache is not None:
            logits = model(step_ids, cache=cache, position_ids=step_positions, padding_mask=mask)  # [B, T, V]
        else:
            logits = model(ids, position_ids=positions, padding_mask=mask)  # [B, W + step, V], all recomputed
        next_logits = logits[:, -1, :]  # [B, V], the prediction after each row's newest token
        next_id = choose(next_logits)  # [B]
        if eos_token_id is not None:
            next_id = torch.where(finished, eos_token_id, next_id)  # finished rows just repeat EOS
            finished |= next_id == eos_token_id
        new_ids.append(next_id)
        step_logits.append(next_logits)

        ids = torch.cat([ids, next_id[:, None]], dim=1)  # [B, W + step + 1]
        positions = torch.cat([positions, positions[:, -1:] + 1], dim=1)  # [B, W + step + 1]
        if mask is not None:
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)  # the new token is a real one
        step_ids, step_positions = next_id[:, None], positions[:, -1:]  # decode: one new token per row
        if on_step is not None:
            on_step(step, cache)
        if finished.all():
            break
    batch, vocab = ids.shape[0], model.config.vocab_size
    new = torch.stack(new_ids, dim=1) if new_ids else torch.empty(batch, 0, dtype=torch.long)  # [B, steps']
    logits = torch.stack(step_logits, dim=1) if step_logits else torch.empty(batch, 0, vocab)  # [B, steps', V]
    return new, logits, bool(new_ids) and bool(finished.all())


@dataclass(frozen=True)
class CacheSpeedup:
    """Median CPU seconds of the same greedy generation with and without the KV cache, and the tokens of each."""

    cached_seconds: float
    uncached_seconds: float
    cached_tokens: list[list[int]]
    uncached_tokens: list[list[int]]

    @property
    def speedup(self) -> float:
        """How many times less time the cached loop takes: uncached seconds / cached seconds."""
        return self.uncached_seconds / self.cached_seconds


def time_cache_speedup(model: Transformer, prompt_ids, max_new_tokens: int, repeats: int = 3) -> CacheSpeedup:
    """Time greedy ``generate(model, prompt_ids, max_new_tokens)`` with the cache and without it.

    After one short warm-up call, the runs alternate cached, uncached, cached, ..., cached: ``repeats``
    uncached runs, each between two cached ones (``repeats + 1``), so a machine that slows down or speeds up
    during the measurement shifts both sides alike. Each run is timed in CPU seconds of this process
    (``time.process_time``): on a shared machine the time other programs hold the processor is left out, and
    on an idle one with one torch thread it is about the wall time. The seconds are medians over each side's runs.
    """
    if not _is_int(repeats) or repeats < 1:
        raise ValueError(f"repeats must be a positive integer (uncached runs to time), got {repeats!r}.")
    warm_up = [prompt[:8] for prompt in _as_prompts(prompt_ids)]  # short: first-call costs, not the work
    generate(model, warm_up, min(max_new_tokens, 2))
    seconds: dict[bool, list[float]] = {True: [], False: []}
    tokens: dict[bool, list[list[int]]] = {}
    for use_cache in [True, False] * repeats + [True]:
        start = time.process_time()
        tokens[use_cache] = generate(model, prompt_ids, max_new_tokens, use_cache=use_cache).tokens
        seconds[use_cache].append(time.process_time() - start)
    return CacheSpeedup(
        cached_seconds=statistics.median(seconds[True]),
        uncached_seconds=statistics.median(seconds[False]),
        cached_tokens=tokens[True],
        uncached_tokens=tokens[False],
    )


def next_token(
    logits: torch.Tensor, temperature: float = 0.0, top_k: int | None = None, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Pick one token id per row from logits [B, V]: argmax when temperature is 0, else a sample."""
    if temperature == 0:
        return logits.argmax(dim=-1)  # [B]
    scaled = logits / temperature  # <1 sharpens the distribution, >1 flattens it
    if not torch.isfinite(scaled).all() and torch.isfinite(logits).all():
        raise ValueError(
            f"temperature={temperature!r} is so small that logits / temperature overflows to infinity; "
            "use temperature=0 for greedy decoding, or a temperature of at least 1e-3."
        )
    logits = scaled
    if top_k is not None and top_k < logits.shape[-1]:
        kth_best = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # [B, 1]
        logits = logits.masked_fill(logits < kth_best, float("-inf"))  # only the k best can be drawn
    probs = torch.softmax(logits, dim=-1)  # [B, V]
    return torch.multinomial(probs, num_samples=1, generator=generator)[:, 0]  # [B]


def tokens_that_fit(n_positions: int, prompts: list[list[int]], max_new_tokens: int, on_limit: str) -> int:
    """How many new tokens to generate so that no sequence exceeds n_positions tokens."""
    if not isinstance(max_new_tokens, int) or isinstance(max_new_tokens, bool) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be a non-negative integer, got {max_new_tokens!r}.")
    if on_limit not in ("error", "truncate"):
        raise ValueError(f"on_limit must be 'error' or 'truncate', got {on_limit!r}.")
    longest = max(len(p) for p in prompts)
    if longest > n_positions:
        raise ValueError(
            f"the prompt has {longest} tokens but the model reads at most n_positions={n_positions} "
            f"(its position table has {n_positions} rows). Shorten the prompt to at most {n_positions} tokens."
        )
    room = n_positions - longest
    if max_new_tokens <= room or on_limit == "truncate":
        return min(max_new_tokens, room)
    raise ValueError(
        f"prompt ({longest} tokens) + max_new_tokens ({max_new_tokens}) = {longest + max_new_tokens} tokens, more "
        f"than n_positions={n_positions}. Ask for at most {room} new tokens, or pass on_limit='truncate' to stop "
        "when the sequence reaches the position limit."
    )


def left_pad(prompts: list[list[int]], device=None, pad_id: int = PAD_ID) -> tuple[torch.Tensor, torch.Tensor]:
    """ids [B, W] with each prompt right-aligned (``pad_id`` before it) and mask [B, W], True on real tokens."""
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)  # [B, W]
    mask = torch.zeros((len(prompts), width), dtype=torch.bool)  # [B, W]
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt) :] = torch.tensor(prompt, dtype=torch.long)
        mask[row, width - len(prompt) :] = True
    return ids.to(device), mask.to(device)


def _as_prompts(prompt_ids) -> list[list[int]]:
    """A list of ints, a list of id lists, a 1-D tensor or a 2-D [B, T] tensor -> one id list per row."""
    if isinstance(prompt_ids, torch.Tensor):
        if prompt_ids.dim() == 1:
            prompt_ids = prompt_ids[None]  # [1, T]
        if prompt_ids.dim() != 2 or prompt_ids.dtype.is_floating_point or prompt_ids.dtype == torch.bool:
            raise ValueError(
                f"prompt_ids must be integer token ids of shape [T] or [B, T], got {prompt_ids.dtype} "
                f"{list(prompt_ids.shape)}. For prompts of different lengths use generate_batch."
            )
        if prompt_ids.shape[0] == 0:
            raise ValueError(f"the batch is empty (prompt_ids has shape {list(prompt_ids.shape)}): give one prompt.")
        return [_as_id_list(row) for row in prompt_ids.tolist()]
    if _is_sequence(prompt_ids) and prompt_ids and all(_is_sequence(p) for p in prompt_ids):
        return [_as_id_list(p) for p in prompt_ids]  # several prompts, possibly of different lengths
    return [_as_id_list(prompt_ids)]


def _as_id_list(prompt) -> list[int]:
    if isinstance(prompt, torch.Tensor):
        prompt = prompt.tolist()
    if not _is_sequence(prompt) or not all(_is_int(i) for i in prompt):
        raise ValueError(
            f"a prompt must be a list of integer token ids, got {prompt!r:.80}. "
            "Encode text first, e.g. tokenizer.encode('the cat')."
        )
    if len(prompt) == 0:
        raise ValueError("a prompt is empty; give at least one token (e.g. the tokenizer's bos_token_id).")
    return [int(i) for i in prompt]


def _is_sequence(value) -> bool:
    return isinstance(value, (Sequence, torch.Tensor)) and not isinstance(value, str)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_sampling(temperature: float, top_k: int | None) -> None:
    if not isinstance(temperature, (int, float)) or not math.isfinite(temperature) or temperature < 0:
        raise ValueError(f"temperature must be a finite number >= 0 (0 = greedy), got {temperature!r}.")
    if top_k is not None and (not _is_int(top_k) or top_k < 1):
        raise ValueError(f"top_k must be a positive integer or None, got {top_k!r}.")


def _cut_after_eos(new_ids: torch.Tensor, eos_token_id: int | None) -> list[list[int]]:
    rows = new_ids.tolist()  # [B, steps]
    if eos_token_id is None:
        return rows
    return [row[: row.index(eos_token_id) + 1] if eos_token_id in row else row for row in rows]
