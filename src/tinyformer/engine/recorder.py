"""What the pool and the queues held at every step, for pictures of the engine at work (lesson 13's stepper).

``Stats.timeline`` keeps counts (how many requests, how many blocks); a :class:`StepSnapshot` keeps *which*:
each running request's block table, the two queues in order, what each scheduled request runs (a prefill chunk
or one decode), who was preempted and who reused cached blocks. It is taken when ``Engine._record`` runs, just
after scheduling, so it shows exactly the block tables the model runner reads in that step. Recording is off
unless asked for (``Engine(..., record_steps=True)``): copying every block table costs time in each step.
"""

from __future__ import annotations

from dataclasses import dataclass

from tinyformer.engine.block_manager import BlockManager
from tinyformer.engine.sequence import Sequence


@dataclass(frozen=True)
class Share:
    """One request's part of a step: ``tokens`` run through the model, as a prefill chunk or a decode."""

    seq_id: int
    tokens: int
    prefill: bool  # prompt (or recomputed) tokens; False: a decode, its next token only


@dataclass(frozen=True)
class StepSnapshot:
    step: int
    running: tuple[int, ...]  # seq ids, in the order they were admitted (the last one is preempted first)
    waiting: tuple[int, ...]  # seq ids, front of the queue first
    block_tables: dict[int, tuple[int, ...]]  # seq id -> its blocks in token order, for every running request
    cached_tokens: dict[int, int]  # seq id -> tokens with keys and values cached once this step has run
    scheduled: tuple[Share, ...]  # in the order of the packed batch
    preempted: tuple[int, ...]  # seq ids preempted while scheduling this step, in order
    prefix_hits: dict[int, int]  # seq id -> blocks it reused from the prefix cache when admitted this step
    free: tuple[int, ...]  # free block ids, next handed out first
    cached_free: frozenset[int]  # of which, blocks that still hold a named prefix (a later request can hit them)
    num_blocks: int  # the whole pool, the null block included
    block_size: int

    def owners(self) -> dict[int, tuple[int, ...]]:
        """Block id -> the running requests whose tables hold it (more than one: a shared prefix block)."""
        held: dict[int, list[int]] = {}
        for seq_id in self.running:
            for block_id in self.block_tables[seq_id]:
                held.setdefault(block_id, []).append(seq_id)
        return {block_id: tuple(ids) for block_id, ids in held.items()}

    @property
    def blocks_used(self) -> int:
        """Blocks held by at least one request (Stats' ``blocks_used`` for the same step)."""
        return len(self.owners())

    @property
    def prefill_tokens(self) -> int:
        return sum(s.tokens for s in self.scheduled if s.prefill)

    @property
    def decodes(self) -> int:
        return sum(1 for s in self.scheduled if not s.prefill)


def is_prefill(seq: Sequence, num_tokens: int) -> bool:
    """Whether ``num_tokens`` scheduled tokens of ``seq`` are (part of) a prefill rather than one decode: its
    sequence is not fully cached after them, or they are more than its next token (and its draft tokens)."""
    return seq.num_computed_tokens + num_tokens < seq.num_tokens or num_tokens > 1 + len(seq.draft_ids)


def snapshot(
    step: int,
    running: list[Sequence],
    waiting: list[Sequence],
    scheduled: list[tuple[Sequence, int]],
    preempted: list[Sequence],
    prefix_hits: dict[int, int],
    blocks: BlockManager,
) -> StepSnapshot:
    """Copy what the scheduler and the block manager hold right after scheduling ``step``."""
    run_now = {seq.seq_id: n for seq, n in scheduled}
    return StepSnapshot(
        step=step,
        running=tuple(s.seq_id for s in running),
        waiting=tuple(s.seq_id for s in waiting),
        block_tables={s.seq_id: tuple(s.block_table) for s in running},
        cached_tokens={s.seq_id: s.num_computed_tokens + run_now.get(s.seq_id, 0) for s in running},
        scheduled=tuple(Share(s.seq_id, n, is_prefill(s, n)) for s, n in scheduled),
        preempted=tuple(s.seq_id for s in preempted),
        prefix_hits=dict(prefix_hits),
        free=tuple(blocks.free),
        cached_free=frozenset(b for b in blocks.free if blocks.blocks[b].hash is not None),
        num_blocks=len(blocks.blocks),
        block_size=blocks.block_size,
    )
