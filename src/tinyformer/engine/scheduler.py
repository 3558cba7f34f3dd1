"""Continuous batching: which requests run in the next step, and how many tokens each.

Two queues, first come first served. Every step has a budget of ``max_num_batched_tokens`` tokens and at
most ``max_num_seqs`` running requests:

1. Running requests go first, in the order they were admitted: one token each for a decode, or the next
   chunk of a prompt whose prefill did not fit in one step (chunked prefill).
2. A running request that needs a block when none is free **preempts** the newest running request: that
   request gives all its blocks back and goes to the front of the waiting queue; it is recomputed later
   from its prompt and the tokens it had already generated, so its output does not change (recompute).
3. If nobody was preempted, waiting requests are admitted in order while the budget, ``max_num_seqs`` and
   the free blocks allow (its whole sequence so far must fit); each first reuses the cached blocks of its
   prefix.

Requests join (``add``) and leave (when finished) between steps; prefill and decode of different requests
share a step. This follows vLLM's V1 scheduler (``vllm/v1/core/sched/scheduler.py``, FCFS policy).
"""

from __future__ import annotations

from collections import deque

from tinyformer.engine.block_manager import BlockManager
from tinyformer.engine.sequence import Sequence, Status
from tinyformer.engine.stats import Stats

Scheduled = list[tuple[Sequence, int]]  # (request, tokens it runs this step), in the order of the flat batch


class Scheduler:
    def __init__(self, block_manager: BlockManager, max_num_seqs: int, max_num_batched_tokens: int, stats: Stats):
        self.blocks = block_manager
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.stats = stats
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []  # in the order they were admitted: the last one is the newest
        self.preempted_this_step: list[Sequence] = []  # in the order they were preempted
        self.prefix_hits_this_step: dict[int, int] = {}  # for each request admitted: cached blocks it reused

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    def schedule(self) -> Scheduled:
        budget = self.max_num_batched_tokens
        scheduled: Scheduled = []
        self.preempted_this_step, self.prefix_hits_this_step = [], {}
        i = 0
        while i < len(self.running) and budget > 0:  # 1. running requests
            seq = self.running[i]
            n = min(seq.num_uncomputed_tokens, budget)
            if not self.make_room(seq, n):
                break  # it preempted itself: nothing after it can run either
            scheduled.append((seq, n))
            budget -= n
            i += 1
        if self.preempted_this_step:  # the pool is full: admitting anyone now would only preempt again
            return scheduled
        while self.waiting and budget > 0 and len(self.running) < self.max_num_seqs:  # 2. waiting requests
            seq = self.waiting[0]
            hits = self.blocks.cached_prefix(seq)
            n = min(seq.num_tokens - len(hits) * self.blocks.block_size, budget)
            # vLLM admits a request only if its whole sequence so far fits, even when its prefill is chunked.
            if not self.blocks.can_fit(seq, seq.num_tokens, hits) or not self.blocks.allocate(seq, n, hits):
                break  # first come, first served: nobody overtakes the request at the head of the queue
            self.count_prefix_hits(seq, len(hits) * self.blocks.block_size)
            self.prefix_hits_this_step[seq.seq_id] = len(hits)
            self.waiting.popleft()
            seq.status = Status.RUNNING
            self.running.append(seq)
            scheduled.append((seq, n))
            budget -= n
        return scheduled

    def make_room(self, seq: Sequence, num_new_tokens: int) -> bool:
        """Blocks for ``num_new_tokens`` more tokens of a running request, preempting the newest running
        requests until they fit. False if ``seq`` had to preempt itself (it was the newest left)."""
        while not self.blocks.allocate(seq, num_new_tokens):
            victim = self.running[-1]
            self.preempt(victim)
            if victim is seq:
                return False
        return True

    def preempt(self, seq: Sequence) -> None:
        """Recompute, not swap: drop the request's keys and values and queue it again, at the front."""
        self.running.remove(seq)
        self.blocks.free_blocks(seq)
        seq.draft_ids = []  # NEW (speculative decoding): its drafts will never be checked
        seq.status = Status.WAITING
        seq.num_preemptions += 1
        self.waiting.appendleft(seq)
        self.stats.preemptions += 1
        self.preempted_this_step.append(seq)

    def count_prefix_hits(self, seq: Sequence, hit_tokens: int) -> None:
        """Count like vLLM's /metrics: queries and hits of new requests only, in tokens."""
        if not self.blocks.enable_prefix_caching:
            return
        if seq.num_preemptions:
            self.stats.recomputed_hit_tokens += hit_tokens
            return
        seq.cached_prompt_tokens = hit_tokens
        self.stats.prefix_cache_query_tokens += seq.num_tokens
        self.stats.prefix_cache_hit_tokens += hit_tokens

    def finish_step(self, scheduled: Scheduled, next_tokens: dict[int, list[int]]) -> list[Sequence]:
        """Advance every scheduled request by the tokens it ran; append the tokens it gained (one when decoding,
        up to 1 + k with speculative decoding) to those whose whole sequence is now cached; free the finished
        ones. Returns the requests that finished."""
        finished = []
        for seq, n in scheduled:
            seq.num_computed_tokens += n
            seq.draft_ids = []  # NEW (speculative decoding): checked this step; the accepted ones are in next_tokens
            if seq.seq_id not in next_tokens:
                continue  # a prefill chunk: its prompt is not fully cached yet, nothing to sample
            room = seq.max_new_tokens - len(seq.output_ids)  # accepted tokens past the limit are dropped, as in vLLM
            seq.token_ids += next_tokens[seq.seq_id][:room]
            if seq.num_computed_tokens > seq.num_tokens - 1:  # NEW: rejected drafts were cached: give them back
                self.blocks.roll_back(seq, seq.num_tokens - 1)
            if seq.is_finished:
                seq.status = Status.FINISHED
                self.running.remove(seq)
                self.blocks.free_blocks(seq)
                self.blocks.forget(seq)
                finished.append(seq)
        return finished
