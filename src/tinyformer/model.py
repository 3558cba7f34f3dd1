"""A GPT-2 style transformer written out by hand, and its Llama-style variant (lesson 14).

Shapes use B = batch, T = new tokens in this call, S = all tokens attended to (cached + new),
d = n_embd, nh = n_head, nkv = n_kv_head, hd = head_dim = d / nh, V = vocab_size.

Parameter names follow Hugging Face's GPT-2 (transformer.wte, transformer.h.0.attn.c_attn, ...),
so exporting to `GPT2LMHeadModel` is a rename plus a transpose of the Linear weights.

``config.arch="llama"`` changes four things, each in one place below, and keeps the names:
no position table, the rotation of lesson 01 applied to queries and keys in every layer instead
(:func:`tinyformer.positions.apply_rotary`); RMSNorm for LayerNorm; a gated SwiGLU MLP for GELU;
no biases. Both archs may share each key/value head among a group of query heads (``n_kv_head``,
grouped-query attention); GPT-2 keeps one per query head.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn as nn
import torch.nn.functional as F

from tinyformer.config import ModelConfig
from tinyformer.kv_cache import KVCache
from tinyformer.positions import ROPE_BASE, apply_rotary


class CausalSelfAttention(nn.Module):
    """Every token mixes the value vectors of itself and the tokens before it, in its own sequence."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.n_head, self.n_kv_head = config.n_head, config.n_kv_head
        self.head_dim = config.head_dim
        self.rotary = config.arch == "llama"
        bias = config.arch == "gpt2"
        # x -> q [nh x hd], k and v [nkv x hd] each, in one matmul (3 x d wide when nkv = nh)
        self.split_sizes = [config.n_embd, config.n_kv_head * self.head_dim, config.n_kv_head * self.head_dim]
        self.c_attn = nn.Linear(config.n_embd, sum(self.split_sizes), bias=bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=bias)  # heads merged -> back to d
        self.attn_dropout = nn.Dropout(config.dropout)
        self.resid_dropout = nn.Dropout(config.dropout)

    def heads(self, x: torch.Tensor, positions: torch.Tensor | None):
        """x [..., T, d] -> q [..., T, nh, hd], k and v [..., T, nkv, hd]; with rotary positions, q and k are
        rotated by ``positions`` (broadcast against [..., T, heads]), so the keys go into a cache already rotated.
        The engine (lesson 13) calls this on its packed tokens too."""
        q, k, v = self.c_attn(x).split(self.split_sizes, dim=-1)
        q = q.unflatten(-1, (self.n_head, self.head_dim))  # [..., T, nh, hd]
        k = k.unflatten(-1, (self.n_kv_head, self.head_dim))  # [..., T, nkv, hd]
        v = v.unflatten(-1, (self.n_kv_head, self.head_dim))  # [..., T, nkv, hd]
        if self.rotary:
            # apply_rotary rotates along the second-to-last axis: put heads first, then back.
            q = apply_rotary(q.transpose(-3, -2), positions, ROPE_BASE).transpose(-3, -2)
            k = apply_rotary(k.transpose(-3, -2), positions, ROPE_BASE).transpose(-3, -2)
        return q, k, v

    def forward(
        self,
        x,
        allowed,
        cache: KVCache | None = None,
        layer: int = 0,
        need_weights: bool = False,
        positions: torch.Tensor | None = None,
    ):
        B, T, d = x.shape
        rotary_positions = positions[:, None, :] if positions is not None else None  # [B, 1, T]: same for all heads
        q, k, v = (t.transpose(1, 2) for t in self.heads(x, rotary_positions))  # [B, nh, T, hd], [B, nkv, T, hd] x 2
        if cache is not None:
            # Keys and values of earlier tokens never change, so we keep them instead of
            # recomputing them: append this call's rows and attend over everything cached.
            k, v = cache.append(layer, k, v)  # [B, nkv, S, hd]
        k, v = share_kv_heads(k, self.n_head), share_kv_heads(v, self.n_head)  # [B, nh, S, hd]
        scores = q @ k.transpose(-2, -1) / math.sqrt(self.head_dim)  # [B, nh, T, S]
        # A very negative number rather than -inf: a padding row that may see nothing still
        # gets a finite (uniform, ignored) softmax instead of NaN.
        scores = scores.masked_fill(~allowed, torch.finfo(scores.dtype).min)  # [B, nh, T, S]
        weights = F.softmax(scores, dim=-1)  # [B, nh, T, S], each row sums to 1
        mixed = self.attn_dropout(weights) @ v  # [B, nh, T, hd]
        mixed = mixed.transpose(1, 2).contiguous().view(B, T, d)  # [B, T, d], heads merged
        # Hand the [B, nh, T, S] weights back only when asked, so they are freed as soon as possible.
        return self.resid_dropout(self.c_proj(mixed)), (weights if need_weights else None)


def share_kv_heads(kv: torch.Tensor, n_head: int) -> torch.Tensor:
    """Grouped-query attention: kv [B, nkv, S, hd] -> [B, nh, S, hd], each key/value head repeated for the
    n_head / nkv query heads of its group (query head h reads kv head h // group, as in Llama and vLLM)."""
    group = n_head // kv.shape[1]
    return kv if group == 1 else kv.repeat_interleave(group, dim=1)


class MLP(nn.Module):
    """The same small network applied to every token on its own: expand, GELU, project back."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd)
        self.gelu = nn.GELU(approximate="tanh")  # GPT-2's "gelu_new"
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))  # [B, T, d] -> [B, T, 4d] -> [B, T, d]


class SwiGLU(nn.Module):
    """Llama's MLP: two expansions, one gating the other through SiLU, then project back; no biases.

    Three matrices of d x h instead of two of d x 4d, so h = 8/3 d keeps the parameter count (config.mlp_hidden)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.w_gate = nn.Linear(config.n_embd, config.mlp_hidden, bias=False)
        self.w_up = nn.Linear(config.n_embd, config.mlp_hidden, bias=False)
        self.c_proj = nn.Linear(config.mlp_hidden, config.n_embd, bias=False)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        gated = F.silu(self.w_gate(x)) * self.w_up(x)  # [B, T, h]: SiLU(gate) scales each unit of up
        return self.dropout(self.c_proj(gated))  # [B, T, d]


class RMSNorm(nn.Module):
    """LayerNorm without the centring and the bias: x / sqrt(mean(x^2) + eps) x weight."""

    def __init__(self, n_embd: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(n_embd))
        self.eps = eps

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight  # [B, T, d]


def norm(config: ModelConfig) -> nn.Module:
    """The block's normalisation: LayerNorm (gpt2) or RMSNorm (llama)."""
    if config.arch == "llama":
        return RMSNorm(config.n_embd, eps=config.layer_norm_epsilon)
    return nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)


class Block(nn.Module):
    """Pre-LN transformer block: x + attention(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.ln_1 = norm(config)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = norm(config)
        self.mlp = SwiGLU(config) if config.arch == "llama" else MLP(config)

    def forward(self, x, allowed, cache=None, layer=0, need_weights=False, positions=None):
        attn_out, weights = self.attn(self.ln_1(x), allowed, cache, layer, need_weights, positions)
        x = x + attn_out  # [B, T, d], residual keeps the token's own vector
        x = x + self.mlp(self.ln_2(x))  # [B, T, d]
        return x, weights


class Transformer(nn.Module):
    """Token ids [B, T] -> logits [B, T, vocab_size]."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.learned_positions = config.arch == "gpt2"  # llama rotates q and k instead (no table)
        tables = dict(wte=nn.Embedding(config.vocab_size, config.n_embd))  # token table [V, d]
        if self.learned_positions:
            tables["wpe"] = nn.Embedding(config.n_positions, config.n_embd)  # position table [n_positions, d]
        self.transformer = nn.ModuleDict(
            dict(
                **tables,
                drop=nn.Dropout(config.dropout),
                h=nn.ModuleList(Block(config) for _ in range(config.n_layer)),
                ln_f=norm(config),
            )
        )
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.transformer.wte.weight  # tied: one [V, d] table read both ways
        # causal[i, j] is True when position i may look at position j (j <= i).
        causal = torch.tril(torch.ones(config.n_positions, config.n_positions, dtype=torch.bool))
        self.register_buffer("causal", causal, persistent=False)  # [n_positions, n_positions]
        self.apply(self._init_weights)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):  # GPT-2: scale residual writes by depth
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module):
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    @property
    def device(self) -> torch.device:
        """Where the weights are (the CPU, or a GPU after ``model.cuda()``): inputs must be moved there."""
        return self.lm_head.weight.device

    def num_parameters(self) -> int:
        """Trainable numbers, counting the tied wte/lm_head table once."""
        return sum(p.numel() for p in self.parameters())

    def forward(
        self,
        ids: torch.Tensor,
        *,
        cache: KVCache | None = None,
        position_ids: torch.Tensor | None = None,
        padding_mask: torch.Tensor | None = None,
        return_attention: bool = False,
        embeds: torch.Tensor | None = None,
    ):
        """Logits [B, T, V] for token ids [B, T].

        cache: a KVCache; keys/values of ``ids`` are appended to it and positions continue
            from its length (prefill with the prompt, then one token per decode step).
        position_ids: [B, T] explicit positions (for left-padded batches); default past..past+T-1.
        padding_mask: [B, S] True for real tokens over everything attended to (cached + new);
            padded keys are never attended to, so rows of a batch cannot mix.
        return_attention: also return each layer's attention weights [B, nh, T, S].
        embeds: [B, T, d] token vectors to use instead of the rows of wte for ``ids`` (a vision-language
            model puts image vectors at its placeholders' positions; lesson 10).
        """
        past = len(cache) if cache is not None else 0
        self._check_ids(ids)
        self._check_cache(cache)
        B, T = ids.shape
        if position_ids is None:
            position_ids = torch.arange(past, past + T, device=ids.device).expand(B, T)  # [B, T]
        self._check_positions(position_ids, ids)

        tok = self.transformer.wte(ids) if embeds is None else embeds  # [B, T, d], one row of the token table per id
        if tok.shape != (B, T, self.config.n_embd):
            raise ValueError(
                f"embeds must have shape [{B}, {T}, {self.config.n_embd}] (one vector per id), got {list(tok.shape)}."
            )
        pos = self.position_vectors(position_ids)  # [B, T, d], or None for rotary positions
        x = self.transformer.drop(tok if pos is None else tok + pos)  # [B, T, d]

        allowed = self.causal[past : past + T, : past + T]  # [T, S], query i sees keys <= past+i
        allowed = allowed.view(1, 1, T, past + T)  # [1, 1, T, S], same for every row and head
        if padding_mask is not None:
            _check_padding_mask(padding_mask, B, past, T)
            allowed = allowed & padding_mask.view(B, 1, 1, past + T).bool()  # [B, 1, T, S]

        attentions = []
        for layer, block in enumerate(self.transformer.h):
            x, weights = block(x, allowed, cache, layer, return_attention, position_ids)  # [B, T, d]
            attentions.append(weights)
        x = self.transformer.ln_f(x)  # [B, T, d]
        logits = self.lm_head(x)  # [B, T, V], a score for every token of the vocabulary
        if cache is not None:
            cache.advance(T)
        return (logits, attentions) if return_attention else logits

    def position_vectors(self, position_ids: torch.Tensor) -> torch.Tensor | None:
        """GPT-2: one row of the position table per position, to add to the token vectors; llama: None (its
        attention rotates q and k by their positions instead)."""
        if not self.learned_positions:
            return None
        return self.transformer.wpe(position_ids)  # [..., d], one row of the position table per position

    def _check_ids(self, ids: torch.Tensor) -> None:
        if not isinstance(ids, torch.Tensor):
            raise ValueError(f"ids must be a torch.LongTensor of shape [batch, seq], got {type(ids).__name__}.")
        if ids.dtype not in (torch.long, torch.int):
            raise ValueError(f"ids must hold integer token ids (torch.long), got dtype {ids.dtype}.")
        if ids.dim() != 2:
            hint = " Add a batch dimension with ids[None]." if ids.dim() == 1 else ""
            raise ValueError(f"ids must have shape [batch, seq], got {list(ids.shape)}.{hint}")
        if ids.numel() == 0:
            raise ValueError("ids is empty: give at least one token.")
        low, high = int(ids.min()), int(ids.max())
        if low < 0 or high >= self.config.vocab_size:
            bad = low if low < 0 else high
            raise ValueError(
                f"token id {bad} is outside the vocabulary (ids must be in 0..{self.config.vocab_size - 1}); "
                "encode text with the same tokenizer the model was built for."
            )

    def _check_cache(self, cache: KVCache | None) -> None:
        if cache is not None and len(cache.keys) != self.config.n_layer:
            raise ValueError(
                f"the KVCache has room for {len(cache.keys)} layers but the model has n_layer="
                f"{self.config.n_layer}; build it for this model: KVCache(model.config.n_layer)."
            )

    def _check_positions(self, position_ids: torch.Tensor, ids: torch.Tensor) -> None:
        if position_ids.shape != ids.shape:
            raise ValueError(
                f"position_ids has shape {list(position_ids.shape)} but ids has {list(ids.shape)}; "
                "give one position per token."
            )
        first = int(position_ids.min())
        if first < 0:
            raise ValueError(f"position {first} is negative: positions start at 0.")
        last = int(position_ids.max())
        if self.learned_positions and last >= self.config.n_positions:  # rotary positions have no table to outgrow
            raise ValueError(
                f"position {last} has no row in the position table (wpe has n_positions="
                f"{self.config.n_positions} rows, positions 0..{self.config.n_positions - 1}). "
                f"Shorten the input to at most {self.config.n_positions} tokens, or build a model "
                f"with a larger n_positions."
            )


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Inference (generation, evaluation, export): switch dropout off, and restore the model's mode afterwards."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def _check_padding_mask(padding_mask: torch.Tensor, batch: int, past: int, new: int) -> None:
    """The mask covers every key attended to: [B, S] with S = cached + new tokens."""
    if not isinstance(padding_mask, torch.Tensor) or tuple(padding_mask.shape) != (batch, past + new):
        shape = list(padding_mask.shape) if isinstance(padding_mask, torch.Tensor) else type(padding_mask).__name__
        raise ValueError(
            f"padding_mask must have shape [batch, cached + new tokens] = [{batch}, {past} + {new}], got {shape}: "
            "one True/False per key position, True on real tokens, covering the cached ones too."
        )
