"""One engine step through the learner's model: every scheduled token of every request, packed flat.

The batch is not a [B, T] rectangle. It is N tokens in a row (a 40-token prefill chunk of one request,
then one decode token of each of 15 others, ...), with metadata saying which request and position each
token belongs to and where its keys and values go. Nothing is padded.

The runner calls the model's own weights (``wte``, the positions, each block's ``ln_1``, ``attn.heads``,
``c_proj``, ``ln_2``, ``mlp``, then ``ln_f`` and ``lm_head``), so a llama model (rotary positions, grouped-query
attention: the pool holds only its n_kv_head heads) runs as a GPT-2 one does. Only attention is different:
per layer, the new keys (rotated, for llama) and values are written into their cache slots first, then every
query reads its request's keys and values back through its block table (a gather, block by block) and attends
causally. Decodes (one query each) attend together, their block tables padded with the null block and the
padding masked out, as vLLM pads its block tables; each prefill chunk attends on its own. Writing before reading
lets a request reuse, in the same step, blocks that another request scheduled before it is filling (prefix caching).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from tinyformer.engine.block_manager import NULL_BLOCK_ID
from tinyformer.engine.kv_cache import PagedKVCache, slots_of
from tinyformer.engine.scheduler import Scheduled
from tinyformer.model import Transformer, share_kv_heads


@dataclass
class PackedBatch:
    """N new tokens, flat, and what attention needs to read each request's cache."""

    input_ids: torch.Tensor  # [N] token ids
    positions: torch.Tensor  # [N] position of each token in its own request
    slots: torch.Tensor  # [N] where each new token's keys and values are written
    # Decodes (one new token each), attended together: their rows in N, their block tables padded with the
    # null block to the longest, and which of those slots are real.
    decode_rows: torch.Tensor  # [D]
    decode_tables: torch.Tensor  # [D, max_blocks]
    decode_seen: torch.Tensor  # [D, 1, 1, max_blocks * block_size], True on each request's cached tokens
    # Prefill chunks (several new tokens), one at a time: (first row in N, start, stop, block table).
    prefills: list[tuple[int, int, int, torch.Tensor]]
    sample_rows: torch.Tensor  # [R'] row in N of the last token of each request that samples this step
    sample_ids: list[int]  # seq_id of each of those requests

    @classmethod
    def build(cls, scheduled: Scheduled, block_size: int, device) -> PackedBatch:
        ids, positions, slots, rows, sample_ids = [], [], [], [], []
        decodes, prefills = [], []
        for seq, n in scheduled:
            start, stop = seq.num_computed_tokens, seq.num_computed_tokens + n
            if n == 1:
                decodes.append((len(ids), stop, seq.block_table))
            else:
                prefills.append((len(ids), start, stop, tensor(seq.block_table, device)))
            first_row = len(ids)
            ids += seq.scheduled_ids(start, stop)
            positions += range(start, stop)
            slots += slots_of(seq.block_table, start, stop, block_size)
            # The request's last token is in: its next token is sampled. NEW (speculative decoding): so is the
            # token after each draft token, the target's own choice that the draft is checked against.
            for position in range(max(start, seq.num_tokens - 1), stop):
                rows.append(first_row + position - start)
                sample_ids.append(seq.seq_id)
        widest = max((len(table) for _, _, table in decodes), default=0)
        tables = [table + [NULL_BLOCK_ID] * (widest - len(table)) for _, _, table in decodes]
        lengths = tensor([stop for _, stop, _ in decodes], device)
        seen = decode_mask(lengths, widest * block_size)  # [D, S]
        return cls(
            tensor(ids, device),
            tensor(positions, device),
            tensor(slots, device),
            tensor([row for row, _, _ in decodes], device),
            tensor(tables, device).view(len(decodes), widest),
            seen[:, None, None, :],
            prefills,
            tensor(rows, device),
            sample_ids,
        )


def decode_mask(lengths: torch.Tensor, width: int) -> torch.Tensor:
    """[D, width]: True on the slots 0..length-1 each decoding request has cached (its new token included)."""
    return torch.arange(width, device=lengths.device)[None, :] < lengths[:, None]


def tensor(values, device) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.long, device=device)


class ModelRunner:
    def __init__(self, model: Transformer, cache: PagedKVCache):
        self.model = model
        self.cache = cache
        self.n_head = model.config.n_head

    @torch.inference_mode()
    def run(self, scheduled: Scheduled) -> dict[int, list[int]]:
        """Run one step; return {seq_id: [greedy next token]} for the requests whose whole sequence is now cached
        (NEW: for a request with k draft tokens, the target's greedy token after its last token and after each
        draft token: k + 1 tokens)."""
        batch = PackedBatch.build(scheduled, self.cache.block_size, self.model.device)
        t = self.model.transformer
        tok, pos = t.wte(batch.input_ids), self.model.position_vectors(batch.positions)  # [N, d], [N, d] or None
        x = tok if pos is None else tok + pos  # [N, d]
        for layer, block in enumerate(t.h):
            x = x + self.paged_attention(layer, block.attn, block.ln_1(x), batch)  # [N, d]
            x = x + block.mlp(block.ln_2(x))  # [N, d]
        if not batch.sample_ids:
            return {}
        logits = self.model.lm_head(t.ln_f(x[batch.sample_rows]))  # [R', V]: only the rows that sample
        greedy: dict[int, list[int]] = {}
        for seq_id, token in zip(batch.sample_ids, logits.argmax(dim=-1).tolist(), strict=True):
            greedy.setdefault(seq_id, []).append(token)
        return greedy

    def paged_attention(self, layer: int, attn, x: torch.Tensor, batch: PackedBatch) -> torch.Tensor:
        """Causal self-attention of N packed tokens, each request over its own cached keys and values."""
        N, d = x.shape
        q, k, v = attn.heads(x, batch.positions)  # [N, nh, hd], [N, nkv, hd] x 2
        self.cache.write(layer, batch.slots, k, v)  # into the blocks, first
        mixed = torch.empty_like(q)  # [N, nh, hd]
        if len(batch.decode_rows):  # one query per request, over its cache (padded slots masked out)
            keys, values = self.gather(layer, batch.decode_tables)  # [D, nh, S, hd] each
            # Slots a request does not own (null-block padding, the unwritten rest of its last block) are zeroed,
            # not only masked: a masked-out NaN still spoils the softmax (NaN + -inf is NaN), so the poisoned
            # slots of tests fail a read exactly when the mask lets one through.
            unseen = ~batch.decode_seen.transpose(-1, -2)  # [D, 1, S, 1]
            keys, values = keys.masked_fill(unseen, 0.0), values.masked_fill(unseen, 0.0)
            one = q[batch.decode_rows][:, :, None, :]  # [D, nh, 1, hd]
            out = F.scaled_dot_product_attention(one, keys, values, attn_mask=batch.decode_seen)  # [D, nh, 1, hd]
            mixed[batch.decode_rows] = out[:, :, 0, :]
        for row, start, stop, table in batch.prefills:  # n queries at positions start..stop-1, over 0..stop-1
            keys, values = self.gather(layer, table[None, :])  # [1, nh, S, hd] each
            rows = slice(row, row + stop - start)
            query = q[rows].transpose(0, 1)[None]  # [1, nh, n, hd]
            out = F.scaled_dot_product_attention(
                query, keys[:, :, :stop], values[:, :, :stop], attn_mask=causal(start, stop, x.device)
            )
            mixed[rows] = out[0].transpose(0, 1)  # [n, nh, hd]
        return attn.c_proj(mixed.reshape(N, d))  # [N, d], heads merged

    def gather(self, layer: int, block_tables: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The requests' cached keys and values [R, nkv, S, hd], each key/value head repeated for its group of
        query heads -> [R, nh, S, hd]."""
        keys, values = self.cache.gather(layer, block_tables)
        return share_kv_heads(keys, self.n_head), share_kv_heads(values, self.n_head)


def causal(start: int, stop: int, device=None) -> torch.Tensor:
    """[n, S]: the queries at positions start..stop-1 may see cached positions 0..their own."""
    return torch.arange(stop, device=device)[None, :] <= torch.arange(start, stop, device=device)[:, None]
