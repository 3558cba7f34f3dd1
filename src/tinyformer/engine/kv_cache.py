"""The paged KV cache: per layer, one preallocated tensor of blocks for keys and one for values.

    keys[layer]   [num_blocks, block_size, nkv, hd]
    values[layer] [num_blocks, block_size, nkv, hd]

(nkv = n_kv_head: with grouped-query attention a block holds only the shared key/value heads.)

A token's keys and values live in a *slot*: slot = block_id x block_size + offset in the block. A request
finds its slots through its block table, so its blocks can be anywhere in the pool, in any order; and a
block shared through prefix caching is simply listed in two block tables.

Compare :class:`tinyformer.kv_cache.KVCache` (lesson 05): one growing tensor per request, concatenated
every step. Here nothing grows and nothing is copied: memory is taken once, up front, and handed out in
blocks by the block manager.
"""

from __future__ import annotations

import torch

from tinyformer.config import ModelConfig


def slot_of(block_table: list[int], position: int, block_size: int) -> int:
    """Where the token at ``position`` of a request lives in the flattened pool: its block, then the offset."""
    return block_table[position // block_size] * block_size + position % block_size


def slots_of(block_table: list[int], start: int, stop: int, block_size: int) -> list[int]:
    """The slots of positions ``start .. stop - 1``."""
    return [slot_of(block_table, p, block_size) for p in range(start, stop)]


class PagedKVCache:
    """``poison=True`` (for tests) fills every slot no request owns with NaN: the pool starts so, and each block
    is filled again when it changes hands (:meth:`poison_block`). A read of a slot the reader does not own, even
    one masked out of attention, then turns its request's logits to NaN instead of passing by chance."""

    def __init__(
        self,
        config: ModelConfig,
        num_blocks: int,
        block_size: int,
        dtype=torch.float32,
        device="cpu",
        poison: bool = False,
    ):
        shape = (num_blocks, block_size, config.n_kv_head, config.head_dim)
        fill = float("nan") if poison else 0.0
        self.keys = [torch.full(shape, fill, dtype=dtype, device=device) for _ in range(config.n_layer)]
        self.values = [torch.full(shape, fill, dtype=dtype, device=device) for _ in range(config.n_layer)]
        self.block_size = block_size
        self.poison = poison

    def poison_block(self, block_id: int) -> None:
        """Fill a block whose contents nobody owns any more with NaN (only when the cache was made with poison)."""
        if self.poison:
            for t in self.keys + self.values:
                t[block_id] = float("nan")

    @property
    def nbytes(self) -> int:
        """2 x n_layer x num_blocks x block_size x n_kv_head x head_dim x dtype bytes: the whole pool, used or not."""
        return sum(t.numel() * t.element_size() for t in self.keys + self.values)

    def write(self, layer: int, slots: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        """Store the keys and values [N, nkv, hd] of this step's N tokens in their slots [N]."""
        self.keys[layer].flatten(0, 1)[slots] = k  # [num_blocks * block_size, nkv, hd] viewed as rows of slots
        self.values[layer].flatten(0, 1)[slots] = v

    def gather(self, layer: int, block_tables: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values [R, nkv, S, hd] of R requests, read block by block through their block tables
        [R, max_blocks] and laid out in token order (S = max_blocks x block_size): the blocks themselves may be
        anywhere in the pool."""
        R = block_tables.shape[0]
        keys = self.keys[layer][block_tables].flatten(1, 2)  # [R, max_blocks, bs, nkv, hd] -> [R, S, nkv, hd]
        values = self.values[layer][block_tables].flatten(1, 2)
        return keys.view(R, -1, *keys.shape[2:]).transpose(1, 2), values.transpose(1, 2)  # [R, nkv, S, hd]
