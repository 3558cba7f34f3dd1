"""One engine step through the learner's model: every scheduled token of every request, packed flat.

The batch is not a [B, T] rectangle. It is N tokens in a row (a 40-token prefill chunk of one request,
then one decode token of each of 15 others, ...), with metadata saying which request and position each
token belongs to and where its keys and values go. Nothing is padded.

The runner calls the model's own weights (``wte``, ``wpe``, each block's ``ln_1``, ``c_attn``, ``c_proj``,
``ln_2``, ``mlp``, then ``ln_f`` and ``lm_head``); only attention is different: per layer, the new keys
and values are written into their cache slots first, then every query reads its request's keys and
values back through the block table (a gather) and attends with a mask that allows the same request
and earlier positions only. Writing before reading lets a request reuse, in the same step, blocks that
another request scheduled before it is filling (prefix caching).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from tinyformer.engine.kv_cache import PagedKVCache, slots_of
from tinyformer.engine.scheduler import Scheduled
from tinyformer.model import Transformer


@dataclass
class PackedBatch:
    """N new tokens of R requests, and S cached slots they attend over (each request's whole context)."""

    input_ids: torch.Tensor  # [N] token ids
    positions: torch.Tensor  # [N] position of each token in its own request
    slots: torch.Tensor  # [N] where each new token's keys and values are written
    context_slots: torch.Tensor  # [S] every slot the requests read, request after request
    allowed: torch.Tensor  # [N, S] True where a query may attend: same request, position <= its own
    sample_rows: torch.Tensor  # [R'] index in N of the last token of each request that samples this step
    sample_ids: list[int]  # seq_id of each of those requests

    @classmethod
    def build(cls, scheduled: Scheduled, block_size: int, device) -> PackedBatch:
        ids, positions, slots, context, q_req, k_req, k_pos, rows, sample_ids = ([] for _ in range(9))
        for r, (seq, n) in enumerate(scheduled):
            start, stop = seq.num_computed_tokens, seq.num_computed_tokens + n
            ids += seq.token_ids[start:stop]
            positions += range(start, stop)
            slots += slots_of(seq.block_table, start, stop, block_size)
            context += slots_of(seq.block_table, 0, stop, block_size)
            q_req += [r] * n
            k_req += [r] * stop
            k_pos += range(stop)
            if stop == seq.num_tokens:  # the request's last token is in: its next token is sampled
                rows.append(len(ids) - 1)
                sample_ids.append(seq.seq_id)

        def tensor(values):
            return torch.tensor(values, dtype=torch.long, device=device)

        q_pos, q_req, k_req, k_pos = tensor(positions), tensor(q_req), tensor(k_req), tensor(k_pos)
        allowed = (q_req[:, None] == k_req[None, :]) & (k_pos[None, :] <= q_pos[:, None])  # [N, S]
        return cls(tensor(ids), q_pos, tensor(slots), tensor(context), allowed, tensor(rows), sample_ids)


class ModelRunner:
    def __init__(self, model: Transformer, cache: PagedKVCache):
        self.model = model
        self.cache = cache
        self.n_head, self.head_dim = model.config.n_head, model.config.head_dim

    @torch.inference_mode()
    def run(self, scheduled: Scheduled) -> dict[int, int]:
        """Run one step; return {seq_id: greedy next token} for the requests whose whole sequence is now cached."""
        batch = PackedBatch.build(scheduled, self.cache.block_size, self.model.device)
        t = self.model.transformer
        x = t.wte(batch.input_ids) + t.wpe(batch.positions)  # [N, d]
        for layer, block in enumerate(t.h):
            x = x + self.paged_attention(layer, block.attn, block.ln_1(x), batch)  # [N, d]
            x = x + block.mlp(block.ln_2(x))  # [N, d]
        if not batch.sample_ids:
            return {}
        logits = self.model.lm_head(t.ln_f(x[batch.sample_rows]))  # [R', V]: only the rows that sample
        return dict(zip(batch.sample_ids, logits.argmax(dim=-1).tolist(), strict=True))

    def paged_attention(self, layer: int, attn, x: torch.Tensor, batch: PackedBatch) -> torch.Tensor:
        """Causal self-attention of N packed tokens, each over its own request's cached keys and values."""
        N, d = x.shape
        q, k, v = attn.c_attn(x).split(d, dim=1)  # 3 x [N, d]
        heads = (N, self.n_head, self.head_dim)
        self.cache.write(layer, batch.slots, k.view(heads), v.view(heads))  # into the blocks, first
        keys, values = self.cache.read(layer, batch.context_slots)  # [S, nh, hd] each, through the block tables
        q = q.view(heads).transpose(0, 1)  # [nh, N, hd]
        mixed = F.scaled_dot_product_attention(
            q, keys.transpose(0, 1), values.transpose(0, 1), attn_mask=batch.allowed
        )  # [nh, N, hd]; the mask keeps requests apart and causal
        return attn.c_proj(mixed.transpose(0, 1).reshape(N, d))  # [N, d], heads merged
