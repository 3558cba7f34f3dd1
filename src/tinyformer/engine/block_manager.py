"""The block pool: which KV-cache blocks are free, which request holds which, and which full blocks can be
reused by a later request with the same prefix (prefix caching).

Only bookkeeping lives here: block ids, reference counts, hashes. The keys and values themselves are in
:class:`tinyformer.engine.kv_cache.PagedKVCache`, one row of blocks per layer, indexed by these ids.

* **Blocks, not sequences.** The cache is cut into ``num_blocks`` blocks of ``block_size`` tokens. A request
  takes blocks one at a time as it grows, anywhere in the pool; its block table lists them in order.
* **The null block.** Like vLLM, block 0 is never given out (vLLM uses it as a placeholder), so
  ``num_blocks`` blocks hold ``num_blocks - 1`` blocks' worth of requests. The rules (the null block, whole
  blocks) are :mod:`tinyformer.vllm_rules`'s; this module applies them.
* **Prefix caching.** A full block is named by a hash of (its parent block's hash, its tokens), so equal
  hashes mean equal prefixes. A request whose first blocks' hashes are known reuses those blocks instead of
  recomputing them; reference counts say how many requests use a block.
* **LRU eviction.** A block nobody uses goes to the back of the free queue but keeps its contents and its
  hash: until it is handed out again (from the front: least recently freed first), a later request can
  still hit it.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Callable

from tinyformer.engine.sequence import Sequence
from tinyformer.vllm_rules import NULL_BLOCKS, usable_blocks
from tinyformer.vllm_rules import blocks_for_tokens as blocks_needed

NULL_BLOCK_ID = 0  # vLLM's pool holds its first block back (vllm_rules.NULL_BLOCKS = 1); no request ever gets it


def block_hash(parent: bytes | None, token_ids: list[int]) -> bytes:
    """The name of a full block: a hash of its parent block's name (None for a request's first block) and its
    tokens. Two blocks get the same name only when everything before them and in them is the same."""
    h = hashlib.sha256(parent or b"")
    h.update(b",".join(str(t).encode() for t in token_ids))
    return h.digest()


class Block:
    def __init__(self, block_id: int):
        self.block_id = block_id
        self.ref_count = 0  # requests whose block table holds this block
        self.hash: bytes | None = None  # set once the block is full (and so reusable)

    def __repr__(self) -> str:
        return f"Block({self.block_id}, refs={self.ref_count}, cached={self.hash is not None})"


class BlockManager:
    def __init__(
        self,
        num_blocks: int,
        block_size: int,
        enable_prefix_caching: bool = True,
        on_discard: Callable[[int], None] | None = None,
    ):
        """``on_discard(block_id)`` is called whenever a block's contents stop belonging to anyone: freed
        without a hash (nothing can hit it), or handed out again (evicted or reused). The engine passes the
        cache's :meth:`~tinyformer.engine.kv_cache.PagedKVCache.poison_block`, so tests catch stray reads."""
        self.block_size = block_size
        self.on_discard = on_discard or (lambda block_id: None)
        self.enable_prefix_caching = enable_prefix_caching
        self.blocks = [Block(i) for i in range(num_blocks)]
        # Free blocks, least recently freed first. An OrderedDict, so a cached block that gets hit can be taken
        # out of the middle of the queue at once.
        self.free: OrderedDict[int, None] = OrderedDict.fromkeys(range(NULL_BLOCKS, num_blocks))
        self.cached: dict[bytes, Block] = {}  # hash of a full block -> the block holding those tokens
        self.hashes: dict[int, list[bytes]] = {}  # seq_id -> hashes of its full blocks, computed once

    @property
    def num_free_blocks(self) -> int:
        return len(self.free)

    @property
    def num_used_blocks(self) -> int:
        """Blocks held by at least one request (cached blocks nobody holds count as free)."""
        return usable_blocks(len(self.blocks)) - len(self.free)

    # ----- prefix caching ------------------------------------------------------------------------------

    def block_hashes(self, seq: Sequence, num_blocks: int) -> list[bytes]:
        """Hashes of the request's first ``num_blocks`` full blocks (computed on first use, then kept)."""
        known = self.hashes.setdefault(seq.seq_id, [])
        while len(known) < num_blocks:
            parent = known[-1] if known else None
            known.append(block_hash(parent, seq.block_tokens(len(known), self.block_size)))
        return known[:num_blocks]

    def cached_prefix(self, seq: Sequence) -> list[Block]:
        """The blocks already in the cache that hold this request's first tokens, in order.

        As in vLLM, the last prompt token is never served from the cache: the model must run on it to give
        the logits of the first new token. So at most ``(num_tokens - 1) // block_size`` blocks can hit."""
        if not self.enable_prefix_caching:
            return []
        hits = []
        for h in self.block_hashes(seq, (seq.num_tokens - 1) // self.block_size):
            block = self.cached.get(h)
            if block is None:
                break
            hits.append(block)
        return hits

    def _cache_full_blocks(self, seq: Sequence, num_tokens: int, first: int | None = None) -> None:
        """Name the request's blocks that ``num_tokens`` tokens fill, so later requests can find them (from block
        ``first`` on; by default from the first block not yet complete in the cache)."""
        if not self.enable_prefix_caching:
            return
        first = seq.num_computed_tokens // self.block_size if first is None else first
        full = num_tokens // self.block_size
        for i, h in enumerate(self.block_hashes(seq, full)[first:], start=first):
            block = self.blocks[seq.block_table[i]]
            if block.hash is None:
                block.hash = h
                self.cached.setdefault(h, block)  # an identical block already cached stays the one found

    # ----- allocation ---------------------------------------------------------------------------------

    def can_fit(self, seq: Sequence, num_tokens: int, hits: list[Block] = ()) -> bool:
        """Whether the free blocks can hold the request's first ``num_tokens`` tokens, reusing ``hits``."""
        new = blocks_needed(num_tokens, self.block_size) - len(seq.block_table) - len(hits)
        revived = sum(1 for b in hits if b.ref_count == 0)  # cached blocks taken back out of the free queue
        return new + revived <= len(self.free)

    def allocate(self, seq: Sequence, num_new_tokens: int, hits: list[Block] = ()) -> bool:
        """Give ``seq`` the blocks for ``num_new_tokens`` more tokens (after reusing ``hits``, the cached blocks
        of its prefix, for a request being admitted). False, changing nothing, when the pool is too small.

        Blocks are named (cached) now, before the step runs: the model writes their keys and values in this
        step, before any request reads them, so a request scheduled later in the same step may already reuse
        them. vLLM does the same."""
        num_tokens = seq.num_computed_tokens + len(hits) * self.block_size + num_new_tokens
        if not self.can_fit(seq, num_tokens, hits):
            return False
        for block in hits:
            if block.ref_count == 0:
                del self.free[block.block_id]
            block.ref_count += 1
            seq.block_table.append(block.block_id)
        seq.num_computed_tokens += len(hits) * self.block_size
        while len(seq.block_table) < blocks_needed(num_tokens, self.block_size):
            seq.block_table.append(self._take_free_block().block_id)
        self._cache_full_blocks(seq, min(num_tokens, seq.num_tokens))
        return True

    def _take_free_block(self) -> Block:
        block_id, _ = self.free.popitem(last=False)  # the least recently freed block
        block = self.blocks[block_id]
        if block.hash is not None:  # evict: its old contents are about to be overwritten
            if self.cached.get(block.hash) is block:
                del self.cached[block.hash]
            block.hash = None
        block.ref_count = 1
        self.on_discard(block_id)  # the new owner has written none of it yet
        return block

    def free_blocks(self, seq: Sequence) -> None:
        """Give back the request's blocks. A block nobody else holds joins the free queue: at the back if it is
        cached (last block first, so a request's tail is evicted before its more shareable beginning), at the
        front if it is not (nothing to lose by reusing it at once). vLLM orders them the same way."""
        for block_id in reversed(seq.block_table):
            self._release(block_id)
        seq.block_table = []
        seq.num_computed_tokens = 0

    def roll_back(self, seq: Sequence, num_kept_tokens: int) -> list[int]:
        """# NEW (speculative decoding, lesson 16): keep the keys and values of the request's first
        ``num_kept_tokens`` tokens only, the rest were rejected draft tokens. Blocks that hold nothing but rejected
        tokens go back to the pool (returned, in table order); a block the kept tokens reach into stays, its
        rejected slots are simply overwritten later. Blocks the accepted tokens filled are named for prefix caching
        here, since ``allocate`` names only blocks of tokens known before the step."""
        if not 0 <= num_kept_tokens <= seq.num_computed_tokens:
            raise ValueError(f"can keep 0..{seq.num_computed_tokens} cached tokens of {seq!r}, not {num_kept_tokens}.")
        keep = blocks_needed(num_kept_tokens, self.block_size)
        given_back = seq.block_table[keep:]
        for block_id in reversed(given_back):
            self._release(block_id)
        del seq.block_table[keep:]
        seq.num_computed_tokens = num_kept_tokens
        self._cache_full_blocks(seq, num_kept_tokens, first=0)
        return given_back

    def _release(self, block_id: int) -> None:
        block = self.blocks[block_id]
        block.ref_count -= 1
        if block.ref_count == 0:
            self.free[block_id] = None
            if block.hash is None:
                self.free.move_to_end(block_id, last=False)
                self.on_discard(block_id)

    def forget(self, seq: Sequence) -> None:
        """Drop the request's remembered hashes once it is finished."""
        self.hashes.pop(seq.seq_id, None)
