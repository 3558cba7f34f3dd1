"""tinyformer.checks: every checker accepts a correct solution, rejects the usual mistakes with the hint
written for them, and survives whatever the learner's code does (exceptions, wrong types, no return)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from tinyformer import checks, vision
from tinyformer.engine import block_hash

# -- correct solutions (what a learner would write) ---------------------------------------------------------


def attention(q, k, v, *, diagonal=0, softmax_dim=-1, scale=True, mask=True):
    length = q.shape[-2]
    scores = q @ k.transpose(-2, -1) / (math.sqrt(q.shape[-1]) if scale else 1.0)
    if mask:
        allowed = torch.tril(torch.ones(length, length, dtype=torch.bool), diagonal=diagonal)
        scores = scores.masked_fill(~allowed, float("-inf"))
    return torch.softmax(scores, dim=softmax_dim) @ v


def block(x, blk, mask, *, residual=True):
    h = blk.attn(blk.ln_1(x), mask)[0]
    h = x + h if residual else h
    out = blk.mlp(blk.ln_2(h))
    return h + out if residual else out


def sgd_step(params, lr, *, sign=-1.0, scale=True):
    with torch.no_grad():
        for p in params:
            p += sign * (lr if scale else 1.0) * p.grad


def sgd_without_no_grad(params, lr):
    for p in params:
        p -= lr * p.grad


def sgd_rebinding(params, lr):
    for p in params:
        p = p - lr * p.grad  # noqa: F841 - the mistake under test: a new local, the weight is untouched


def kv_capacity(kv_bytes, per_token, block_size, max_model_len, *, whole_request_blocks=True, whole_blocks=True):
    blocks = kv_bytes // (per_token * block_size) if whole_blocks else kv_bytes / (per_token * block_size)
    per_request = math.ceil(max_model_len / block_size) if whole_request_blocks else max_model_len / block_size
    concurrency = blocks / per_request
    return int(concurrency * max_model_len), concurrency


def concurrency_to_fill(slots, per_request, block_size, *, null_block=True):
    blocks = slots // block_size - (1 if null_block else 0)  # vLLM never gives the null block to a request
    return math.ceil(blocks / math.ceil(per_request / block_size))


def left_pad(prompts, *, left=True, mask_value=True):
    width = max(len(p) for p in prompts)
    ids = [[0] * (width - len(p)) + p if left else p + [0] * (width - len(p)) for p in prompts]
    mask = [[not mask_value] * (width - len(p)) + [mask_value] * len(p) for p in prompts]
    return torch.tensor(ids), torch.tensor(mask)


def tril(length, diagonal=0):
    return torch.tril(torch.ones(length, length, dtype=torch.bool), diagonal=diagonal)


def scaled_scores(q, k, divisor=None):
    divisor = math.sqrt(q.shape[-1]) if divisor is None else divisor(q.shape[-1])
    return q @ k.transpose(-2, -1) / divisor


def flat_cross_entropy(logits, targets, **kwargs):
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten(), **kwargs)


def weight_bytes(n, dtype, table=None):
    table = table or {"fp32": 4, "bf16": 2, "fp16": 2, "fp8": 1, "int8": 1, "int4": 0.5}
    return math.ceil(n * table[dtype])


def hamilton_by_hand(requests, total, *, leftovers=True):
    """Largest remainder with fractions (an independent twin of retrieval.hamilton)."""
    from fractions import Fraction

    if sum(requests) <= total:
        return list(requests)
    quotas = [Fraction(r * total, sum(requests)) for r in requests]
    shares = [int(q) for q in quotas]
    if leftovers:
        for i in sorted(range(len(quotas)), key=lambda i: (-(quotas[i] - shares[i]), i))[: total - sum(shares)]:
            shares[i] += 1
    return shares


# checker -> (a correct solution, [(a typical mistake, a fragment of the hint it must get), ...])
CASES = {
    checks.check_embedding_lookup: (
        lambda wte, ids: wte[ids],
        [
            (lambda wte, ids: F.one_hot(ids, wte.shape[0]).float(), "rows* of wte"),
            (lambda wte, ids: wte[ids].transpose(-2, -1), "wrong layout"),
        ],
    ),
    checks.check_position_lookup: (
        lambda wpe, length: wpe[:length],
        [(lambda wpe, length: wpe[1 : length + 1], "off by one"), (lambda wpe, length: wpe[length], "one vector")],
    ),
    checks.check_input_embedding: (
        lambda wte, wpe, ids: wte[ids] + wpe[torch.arange(ids.shape[1])],
        [
            (lambda wte, wpe, ids: wte[ids], "token vectors alone"),
            (lambda wte, wpe, ids: wte[ids] + wpe[ids], "by token id"),
            (lambda wte, wpe, ids: wte[ids] + wpe[1 : ids.shape[1] + 1], "off by one"),
        ],
    ),
    checks.check_causal_mask: (
        tril,
        [
            (lambda n: tril(n, diagonal=-1), "off by one"),
            (lambda n: tril(n).T, "upper triangle"),
            (lambda n: ~tril(n), "inverted"),
            (lambda n: torch.ones(n, n, dtype=torch.bool), "lower triangle"),
        ],
    ),
    checks.check_attention_scores: (
        scaled_scores,
        [
            (lambda q, k: scaled_scores(q, k, divisor=lambda hd: 1.0), "not scaled"),
            (lambda q, k: scaled_scores(q, k, divisor=lambda hd: hd), "divided by head_dim"),
            (lambda q, k: torch.softmax(scaled_scores(q, k), dim=-1), "before* softmax"),
            (lambda q, k: scaled_scores(k, q), "transposed"),
        ],
    ),
    checks.check_attention_mix: (
        lambda weights, v: weights @ v,
        [
            (lambda weights, v: weights.transpose(-2, -1) @ v, "don't transpose"),
            (lambda weights, v: (weights * v).sum(-1), "one matrix product"),
        ],
    ),
    checks.check_causal_attention: (
        attention,
        [
            (lambda q, k, v: attention(q, k, v, diagonal=-1), "keep the diagonal"),
            (lambda q, k, v: attention(q, k, v, softmax_dim=-2), "softmax runs over the last axis"),
            (lambda q, k, v: attention(q, k, v, scale=False), "not scaled"),
            (lambda q, k, v: attention(q, k, v, mask=False), "looked at the future"),
        ],
    ),
    checks.check_mlp: (
        lambda x, mlp: mlp.c_proj(F.gelu(mlp.c_fc(x), approximate="tanh")),
        [
            (lambda x, mlp: mlp.c_proj(F.gelu(mlp.c_fc(x))), "tanh approximation"),
            (lambda x, mlp: mlp.c_proj(F.relu(mlp.c_fc(x))), "that is ReLU"),
            (lambda x, mlp: mlp.c_proj(mlp.c_fc(x)), "no non-linearity"),
            (lambda x, mlp: F.gelu(mlp.c_fc(x), approximate="tanh"), "4d wide"),
        ],
    ),
    checks.check_block: (
        block,
        [
            (lambda x, blk, mask: block(x, blk, mask, residual=False), "no residuals"),
            (lambda x, blk, mask: x + blk.attn(blk.ln_1(x), mask)[0] + blk.mlp(blk.ln_2(x)), "after* the attention"),
            (lambda x, blk, mask: x + blk.attn(blk.ln_1(x), mask), "returns a pair"),
        ],
    ),
    checks.check_lm_head: (
        lambda h, wte: h @ wte.T,
        [
            (lambda h, wte: torch.softmax(h @ wte.T, dim=-1), "probabilities"),
            (lambda h, wte: h[:, -1] @ wte.T, "only the last position"),
            (lambda h, wte: h @ wte, "wteᵀ"),
        ],
    ),
    checks.check_lm_loss: (
        flat_cross_entropy,
        [
            (lambda logits, targets: flat_cross_entropy(logits, targets, reduction="sum"), "the sum"),
            (lambda logits, targets: flat_cross_entropy(logits, targets) / math.log(2), "bits"),
            (lambda logits, targets: flat_cross_entropy(logits, targets, reduction="none"), "one loss per prediction"),
            (lambda logits, targets: F.cross_entropy(logits, targets), "flatten"),
        ],
    ),
    checks.check_sgd_step: (
        sgd_step,
        [
            (lambda params, lr: sgd_step(params, lr, sign=+1.0), "wrong sign"),
            (lambda params, lr: sgd_step(params, lr, scale=False), "learning rate"),
            (sgd_rebinding, "did not change"),
            (sgd_without_no_grad, "torch.no_grad()"),
        ],
    ),
    checks.check_cache_append: (
        lambda cached, new: torch.cat([cached, new], dim=2),
        [
            (lambda cached, new: torch.cat([new, cached], dim=2), "after* the cached"),
            (lambda cached, new: torch.cat([cached, new], dim=1), "tokens axis"),
            (lambda cached, new: torch.cat([cached, new], dim=-1), "tokens axis"),
        ],
    ),
    checks.check_greedy_next_token: (
        lambda logits: logits[:, -1].argmax(-1),
        [
            (lambda logits: logits[:, 0].argmax(-1), "first position"),
            (lambda logits: logits[:, -1].argmax(-1, keepdim=True), "one axis too many"),
            (lambda logits: logits.argmax(1), "over positions"),
        ],
    ),
    checks.check_kv_bytes_per_token: (
        lambda n_layer, heads, head_dim, nbytes: 2 * n_layer * heads * head_dim * nbytes,
        [
            (lambda n_layer, heads, head_dim, nbytes: n_layer * heads * head_dim * nbytes, "factor of 2"),
            (lambda n_layer, heads, head_dim, nbytes: 2 * heads * head_dim * nbytes, "one layer's worth"),
            (lambda n_layer, heads, head_dim, nbytes: 2 * n_layer * head_dim * nbytes, "one head's worth"),
            (lambda n_layer, heads, head_dim, nbytes: 16 * n_layer * heads * head_dim * nbytes, "bits"),
        ],
    ),
    checks.check_attention_scores_bytes: (
        lambda n, heads, batch, nbytes: batch * heads * n * n * nbytes,
        [
            (lambda n, heads, batch, nbytes: batch * heads * n * nbytes, "linearly"),
            (lambda n, heads, batch, nbytes: batch * n * n * nbytes, "one head's worth"),
            (lambda n, heads, batch, nbytes: heads * n * n * nbytes, "one sequence's worth"),
        ],
    ),
    checks.check_weight_bytes: (
        weight_bytes,
        [
            (lambda n, dtype: weight_bytes(n, dtype, {"fp32": 4, "bf16": 2, "fp8": 1, "int4": 1}), "int4"),
            (lambda n, dtype: weight_bytes(n, dtype, {"fp32": 32, "bf16": 16, "fp8": 8, "int4": 4}), "bits"),
        ],
    ),
    checks.check_auth_header: (
        lambda key: {"Authorization": f"Bearer {key}"} if key else {},
        [
            (lambda key: {"Authorization": key} if key else {}, "'Bearer '"),
            (lambda key: {"Authorization": f"Bearer {key}"}, "no Authorization header"),
        ],
    ),
    checks.check_max_tokens_allowed: (
        lambda prompt, limit: limit - prompt,
        [(lambda prompt, limit: limit, "counts the prompt"), (lambda prompt, limit: limit - prompt - 1, "off by one")],
    ),
    checks.check_kv_blocks: (
        lambda nbytes, per_token, block_size: nbytes // (per_token * block_size),
        [
            (lambda nbytes, per_token, block_size: nbytes / (per_token * block_size), "whole blocks"),
            (lambda nbytes, per_token, block_size: nbytes // per_token, "counts tokens"),
        ],
    ),
    checks.check_kv_capacity: (
        kv_capacity,
        [
            (lambda *args: kv_capacity(*args, whole_request_blocks=False), "partly used"),
            (lambda *args: kv_capacity(*args, whole_blocks=False), "whole blocks first"),
            (lambda *args: kv_capacity(*args)[1], "a pair"),
        ],
    ),
    checks.check_concurrency_to_fill_cache: (
        concurrency_to_fill,
        [
            (lambda slots, per_request, block_size: slots // per_request, "count blocks, not tokens"),
            (lambda *args: concurrency_to_fill(*args, null_block=False), "null block"),
            (lambda slots, per_request, block_size: concurrency_to_fill(slots, per_request, block_size) - 1, "down"),
        ],
    ),
    checks.check_image_token_count: (
        lambda size, patch, drop: vision.image_tokens(size, patch, drop_cls=drop),
        [
            (lambda size, patch, drop: (size // patch) ** 2 + 1, "the CLS vector is removed"),
            (lambda size, patch, drop: size // patch, "one row of patches"),
        ],
    ),
    checks.check_expand_placeholders: (
        vision.expand_placeholders,
        [
            (lambda ids, image, n: [t for t in ids if t != image] + [image] * n * ids.count(image), "wrong order"),
            (lambda ids, image, n: [x for t in ids for x in ([t] * (n + 1) if t == image else [t])], "not n more"),
        ],
    ),
    checks.check_image_kv_bytes: (
        vision.image_kv_bytes,
        [
            (lambda n, t, layers, heads, hd, b: n * t * layers * heads * hd * b, "a key AND a value"),
            (lambda n, t, layers, heads, hd, b: 2 * t * layers * heads * hd * b, "count every image"),
        ],
    ),
    checks.check_left_pad: (
        left_pad,
        [
            (lambda prompts: left_pad(prompts, left=False), "right padding"),
            (lambda prompts: left_pad(prompts, mask_value=False), "inverted"),
        ],
    ),
    checks.check_mean_pool: (
        lambda h, m: (h * m[..., None]).sum(1) / m.sum(1, keepdim=True),
        [
            (lambda h, m: h.mean(1), "averaged the padding"),
            (lambda h, m: (h * m[..., None]).sum(1), "sum over real tokens"),
        ],
    ),
    checks.check_hamilton: (
        hamilton_by_hand,
        [
            (lambda r, t: [round(x * t / sum(r)) for x in r], "leftovers by remainder"),
            (
                lambda r, t: hamilton_by_hand(r, min(t, sum(r) - 1)) if sum(r) <= t else hamilton_by_hand(r, t),
                "in full",
            ),
        ],
    ),
    checks.check_parents_that_fit: (
        lambda L, p, a, c: (L - p - a) // c,
        [
            (lambda L, p, a, c: (L - p) // c, "answer's tokens"),
            (lambda L, p, a, c: -(-(L - p - a) // c), "round down"),
        ],
    ),
}

FP8_BYTES = {"fp32": 4, "bf16": 2, "fp8": 1}
AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)


def int8_round_trip(w, *, per_row=True, zero_rows=True):
    scale = w.abs().amax(dim=1, keepdim=True) / 127 if per_row else w.abs().max() / 127
    if zero_rows:
        scale = torch.where(scale == 0, torch.ones_like(scale), scale)
    return torch.round(w / scale).clamp(-127, 127) * scale


def pack_int4(q, *, order=AWQ_ORDER, as_int32=True):
    rows, cols = q.shape
    eights = q.long().reshape(rows, cols // 8, 8)[..., list(order)]
    packed = (eights << torch.arange(0, 32, 4)).sum(dim=-1)
    return torch.where(packed >= 2**31, packed - 2**32, packed).int() if as_int32 else packed


CASES[checks.check_int8_round_trip] = (
    int8_round_trip,
    [
        (lambda w: int8_round_trip(w, per_row=False), "one scale for the whole matrix"),
        (lambda w: int8_round_trip(w, zero_rows=False), "all-zero row"),
        (lambda w: w.clone(), "unchanged"),
    ],
)
CASES[checks.check_int4_pack] = (
    pack_int4,
    [
        (lambda q: pack_int4(q, order=tuple(range(8))), "plain order"),
        (lambda q: pack_int4(q, order=(0, 4, 1, 5, 2, 6, 3, 7)), "wrong way round"),
        (lambda q: pack_int4(q, as_int32=False), "subtract 2**32"),
    ],
)
CASES[checks.check_kv_bytes_fp8] = (
    lambda n_layer, heads, head_dim, dtype: 2 * n_layer * heads * head_dim * FP8_BYTES[dtype],
    [
        (lambda n_layer, heads, head_dim, dtype: n_layer * heads * head_dim * FP8_BYTES[dtype], "factor of 2"),
        (lambda n_layer, heads, head_dim, dtype: 16 * n_layer * heads * head_dim * FP8_BYTES[dtype], "bits"),
    ],
)


def preemption_choice(running, free_blocks, requester, wanted, *, newest=True, largest=False):
    running, preempted = list(running), []
    while free_blocks < wanted:
        victim = max(running, key=lambda r: r[1]) if largest else running[-1] if newest else running[0]
        running.remove(victim)
        preempted.append(victim[0])
        free_blocks += victim[1]
        if victim[0] == requester:
            break
    return preempted


def block_hashes(tokens, block_size, *, chained=True, partial=False):
    parent, hashes = None, []
    for i in range(-(-len(tokens) // block_size) if partial else len(tokens) // block_size):
        parent = block_hash(parent if chained else None, tokens[i * block_size : (i + 1) * block_size])
        hashes.append(parent)
    return hashes


CASES |= {
    checks.check_blocks_needed: (
        lambda n, block_size: -(-n // block_size),
        [
            (lambda n, block_size: n // block_size, "rounded down"),
            (lambda n, block_size: n // block_size + 1, "no extra block"),
        ],
    ),
    checks.check_block_table_lookup: (
        lambda table, p, block_size: table[p // block_size] * block_size + p % block_size,
        [
            (lambda table, p, block_size: table[p // block_size], "block id"),
            (lambda table, p, block_size: table[0] * block_size + p, "next to each other"),
        ],
    ),
    checks.check_preemption_choice: (
        preemption_choice,
        [
            (lambda *args: preemption_choice(*args, newest=False), "NEWEST"),
            (lambda *args: preemption_choice(*args, largest=True), "not the largest"),
        ],
    ),
    checks.check_block_hashes: (
        block_hashes,
        [
            (lambda *args: block_hashes(*args, chained=False), "previous block's hash"),
            (lambda *args: block_hashes(*args, partial=True), "full blocks only"),
        ],
    ),
}


def rotary(x, positions, *, sign=1.0, halves=False):
    """A learner's rotary: pairs (2i, 2i+1), or (i, i + hd/2) with halves=True; sign=-1 rotates backwards."""
    hd = x.shape[-1]
    angles = sign * positions.double()[:, None] * 10000.0 ** (-torch.arange(0, hd, 2).double() / hd)  # [T, hd/2]
    cos, sin = torch.cos(angles).float(), torch.sin(angles).float()
    even, odd = (x[..., : hd // 2], x[..., hd // 2 :]) if halves else (x[..., 0::2], x[..., 1::2])
    first, second = even * cos - odd * sin, even * sin + odd * cos
    if halves:
        return torch.cat([first, second], dim=-1)
    return torch.stack([first, second], dim=-1).flatten(-2)


CASES |= {
    checks.check_rotary: (
        rotary,
        [
            (lambda x, positions: rotary(x, positions, sign=-1.0), "wrong way"),
            (lambda x, positions: rotary(x, positions, halves=True), "rotate-half"),
            (lambda x, positions: rotary(x, torch.arange(x.shape[-2])), "positions you were given"),
        ],
    ),
    checks.check_kv_head_of: (
        lambda h, n_head, n_kv_head: h // (n_head // n_kv_head),
        [
            (lambda h, n_head, n_kv_head: h % n_kv_head, "in turn"),
            (lambda h, n_head, n_kv_head: h // n_kv_head, "group size"),
        ],
    ),
    checks.check_kv_bytes_gqa: (
        lambda c, nbytes: 2 * c.n_layer * c.n_kv_head * c.head_dim * nbytes,
        [
            (lambda c, nbytes: 2 * c.n_layer * c.n_head * c.head_dim * nbytes, "every query head"),
            (lambda c, nbytes: c.n_layer * c.n_kv_head * c.head_dim * nbytes, "key AND a value"),
        ],
    ),
}


def first_agreeing(draft, target):
    """How many draft tokens agree with the target before the first that does not."""
    n = 0
    while n < len(draft) and draft[n] == target[n]:
        n += 1
    return n


CASES |= {
    checks.check_acceptance_rule: (
        lambda draft, target: target[: first_agreeing(draft, target) + 1],
        [
            (lambda draft, target: target[: first_agreeing(draft, target)], "target's own token"),
            (
                lambda draft, target: target[: sum(d == t for d, t in zip(draft, target[:-1], strict=True)) + 1],
                "FIRST disagreement",
            ),
            (lambda draft, target: (draft + target[-1:])[: first_agreeing(draft, target) + 1], "TARGET's token"),
        ],
    ),
}


def token_step(transitions, state, text, *, all_characters=True, stop_when_dead=True):
    """A learner's token step: every character (or only the first), stopping at -1 (or staying put)."""
    for c in text if all_characters else text[:1]:
        state = transitions[state].get(c, -1 if stop_when_dead else state)
        if state == -1:
            return -1
    return state


CASES[checks.check_token_step] = (
    token_step,
    [
        (lambda tr, s, text: token_step(tr, s, text, all_characters=False), "only the first character"),
        (lambda tr, s, text: token_step(tr, s, text, stop_when_dead=False), "dead for good"),
    ],
)

CASES[checks.check_lora_update] = (
    lambda x, w, a, b, alpha: x @ w.T + (alpha / a.shape[0]) * (x @ a.T) @ b.T,  # written out, not the package's
    [
        (lambda x, w, a, b, alpha: x @ w.T + (x @ a.T) @ b.T, "scaled by alpha / r"),
        (lambda x, w, a, b, alpha: x @ w.T + alpha * (x @ a.T) @ b.T, "divide alpha by the rank"),
        (lambda x, w, a, b, alpha: (alpha / a.shape[0]) * (x @ a.T) @ b.T, "W x is still there"),
    ],
)


def stage_layers(n_layer, pp, *, remainder_to="before the last"):
    """A learner's split of layers over pipeline stages: the remainder before the last stage (vLLM's), on the last,
    or on the first stages."""
    base, extra = divmod(n_layer, pp)
    sizes = [base] * pp
    if remainder_to == "last":
        sizes[-1] += extra
    else:
        for stage in range(extra) if remainder_to == "first" else range(pp - 1 - extra, pp - 1):
            sizes[stage] += 1
    starts = [sum(sizes[:stage]) for stage in range(pp)]
    return [list(range(start, start + size)) for start, size in zip(starts, sizes, strict=True)]


CASES[checks.check_stage_layers] = (
    stage_layers,
    [
        (lambda n, pp: stage_layers(n, pp, remainder_to="last"), "stages before the last"),
        (lambda n, pp: stage_layers(n, pp, remainder_to="first"), "stages before the last"),
        (lambda n, pp: [len(stage) for stage in stage_layers(n, pp)], "the layer numbers themselves"),
    ],
)


CHECKERS = list(CASES)


def ids(checker) -> str:
    return checker.__name__


@pytest.mark.parametrize("checker", CHECKERS, ids=ids)
def test_accepts_a_correct_solution(checker, capsys):
    result = checker(CASES[checker][0])
    out = capsys.readouterr().out
    assert result and result.passed, out
    assert out.startswith("✅") and "passed all" in out


@pytest.mark.parametrize(
    ("checker", "index"),
    [(checker, i) for checker in CHECKERS for i in range(len(CASES[checker][1]))],
    ids=lambda value: ids(value) if callable(value) else f"mistake{value}",
)
def test_rejects_a_typical_mistake_with_its_hint(checker, index, capsys):
    wrong, hint = CASES[checker][1][index]
    result = checker(wrong)
    out = capsys.readouterr().out
    assert not result and not result.passed
    assert out.startswith("❌") and "hint:" in out
    assert hint in out, f"expected a hint containing {hint!r}, got:\n{out}"


@pytest.mark.parametrize("checker", CHECKERS, ids=ids)
def test_rejects_at_least_two_mistakes(checker):
    assert len(CASES[checker][1]) >= 2


def test_every_checker_is_covered():
    exported = {getattr(checks, name) for name in checks.__all__ if name.startswith("check_")}
    assert exported == set(CHECKERS)


@pytest.mark.parametrize("checker", CHECKERS, ids=ids)
def test_learner_errors_never_escape(checker, capsys):
    def crashes(*args):
        raise ZeroDivisionError("learner bug")

    def exits(*args):
        raise SystemExit(3)

    for fn, shown in [(crashes, "ZeroDivisionError: learner bug"), (exits, "SystemExit")]:
        result = checker(fn)
        out = capsys.readouterr().out
        assert not result and shown in out


def test_unfinished_exercise_and_misuse_get_plain_messages(capsys):
    def stub(length):
        raise NotImplementedError

    assert not checks.check_causal_mask(stub)
    assert "not written yet" in capsys.readouterr().out
    assert not checks.check_causal_mask(tril(3))  # called the function instead of passing it
    assert "Pass the function without calling it" in capsys.readouterr().out
    assert not checks.check_causal_mask(lambda length: None)
    assert "forget `return`" in capsys.readouterr().out
    assert not checks.check_kv_blocks(lambda *args: "ten")
    assert "expected a number" in capsys.readouterr().out


def test_the_line_of_the_learners_code_is_named(capsys):
    def my_mask(length):
        ones = torch.ones(length)
        return ones @ torch.ones(length + 1)  # the faulty line

    checks.check_causal_mask(my_mask)
    out = capsys.readouterr().out
    assert "in my_mask, line" in out and "the faulty line" in out


def test_a_check_leaves_the_notebooks_random_state_alone(capsys):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    checks.check_causal_attention(attention)
    checks.check_sgd_step(lambda params, lr: torch.rand(1))  # the learner's code draws numbers too
    assert torch.equal(torch.rand(3), expected)


def test_inputs_changed_in_place_do_not_leak_into_later_cases():
    def vandal(wte, ids):
        answer = wte[ids].clone()
        wte.zero_()  # ruins its own copy only
        return answer

    assert checks.check_embedding_lookup(vandal, quiet=True)


def test_no_solution_code_is_printed(capsys):
    checks.check_causal_attention(lambda q, k, v: q)
    checks.check_mlp(lambda x, mlp: x)
    out = capsys.readouterr().out
    for solution_text in ("tril", "masked_fill", "softmax(", "c_fc(", "@ v"):
        assert solution_text not in out


def test_quiet_returns_the_message_without_printing(capsys):
    result = checks.check_kv_blocks(lambda nbytes, per_token, block_size: 0, quiet=True)
    assert capsys.readouterr().out == ""
    assert not result and "expected 10, got 0" in str(result)


def test_works_with_gradients_switched_off_globally():
    with torch.no_grad():  # notebook 03 runs with torch.set_grad_enabled(False)
        assert checks.check_sgd_step(sgd_step, quiet=True)
        assert checks.check_mlp(CASES[checks.check_mlp][0], quiet=True)


def test_checkers_reject_floats_that_only_truncate_to_the_right_integers():
    """9.7 for 9: converting a float answer to the expected integer type would truncate it into a pass."""
    from tinyformer.checks import check_greedy_next_token, check_kv_bytes_per_token, check_max_tokens_allowed
    from tinyformer.checks.core import compare_numbers, compare_tensors, tensors_match

    expected = torch.tensor([9, 3])
    assert compare_tensors(atol=0, rtol=0)(torch.tensor([9.7, 3.2]), expected).startswith("expected whole numbers")
    assert compare_tensors(atol=0, rtol=0)(torch.tensor([9.0, 3.0]), expected) is None  # whole floats are fine
    assert not tensors_match(torch.tensor([9.7, 3.2]), expected)
    assert compare_numbers()(9.7, 9).startswith("expected a whole number (9), got 9.7")
    assert compare_numbers()(9 + 1e-12, 9) is not None  # within rel 1e-9, but a count has no fraction
    assert compare_numbers()(9.0, 9) is None

    def argmax_plus_fraction(logits):
        return logits[:, -1, :].argmax(-1).float() + 0.7  # truncates to the right ids

    assert not check_greedy_next_token(argmax_plus_fraction, quiet=True)
    assert check_greedy_next_token(lambda logits: logits[:, -1, :].argmax(-1), quiet=True)
    assert not check_max_tokens_allowed(lambda prompt, limit: limit - prompt + 0.7, quiet=True)
    assert not check_kv_bytes_per_token(
        lambda layers, heads, dim, nbytes: 2 * layers * heads * dim * nbytes + 0.5, quiet=True
    )
