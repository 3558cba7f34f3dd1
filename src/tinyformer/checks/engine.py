"""Lesson 13 exercises: the engine's bookkeeping, checked against :mod:`tinyformer.engine`.

Expected answers come from the package's own block manager and scheduler, run on small made-up cases:
blocks a request needs, where a token's keys and values live (the block-table lookup), which requests a
preemption takes, and the chained hashes that name full blocks for prefix caching.
"""

from __future__ import annotations

from tinyformer.checks.core import Case, compare_numbers, run_check
from tinyformer.engine import BlockManager, Scheduler, Sequence, Stats
from tinyformer.engine.block_manager import blocks_needed
from tinyformer.engine.kv_cache import slot_of

# ----- blocks a request needs --------------------------------------------------------------------

BLOCK_CASES = ((1, 32), (31, 32), (32, 32), (33, 32), (70, 32), (128, 128), (129, 16))


def check_blocks_needed(fn, *, quiet: bool = False):
    """``fn(num_tokens, block_size)`` -> how many KV blocks a request of ``num_tokens`` tokens holds."""

    def make_cases():
        return [Case(f"{n} tokens, blocks of {b}", (n, b), blocks_needed(n, b)) for n, b in BLOCK_CASES]

    def rounded_down(got, case):
        n, b = case.args
        if got == n // b and n % b:
            return "rounded down: a partly filled block is still a whole block, reserved for the tokens to come."
        return None

    def one_too_many(got, case):
        n, b = case.args
        if got == n // b + 1 and n % b == 0:
            return f"{n} tokens fill {n // b} blocks exactly: no extra block is needed."
        return None

    return run_check(
        "check_blocks_needed",
        fn,
        make_cases,
        compare_numbers(),
        diagnoses=(rounded_down, one_too_many),
        hint="divide and round UP: ceil(num_tokens / block_size).",
        quiet=quiet,
    )


# ----- the block-table lookup --------------------------------------------------------------------

LOOKUP_CASES = (([7, 2, 5], 0, 4), ([7, 2, 5], 5, 4), ([7, 2, 5], 11, 4), ([3, 1], 40, 32), ([9], 3, 16))


def check_block_table_lookup(fn, *, quiet: bool = False):
    """``fn(block_table, position, block_size)`` -> the slot (row of the flattened pool of
    ``num_blocks x block_size`` token rows) where the token at ``position`` of the request is stored."""

    def make_cases():
        return [
            Case(f"block_table={table}, position {p}, blocks of {b}", (table, p, b), slot_of(table, p, b))
            for table, p, b in LOOKUP_CASES
        ]

    def contiguous(got, case):
        table, p, b = case.args
        if got == table[0] * b + p:
            return "the request's blocks need not be next to each other: look up block position // block_size."
        return None

    def block_only(got, case):
        table, p, b = case.args
        if got == table[p // b]:
            return "that is the block id; the slot also needs the block's first row (id x block_size) + the offset."
        return None

    def position_as_block(got, case):
        table, p, b = case.args
        if p // b != p and got == p:
            return "the position inside the request is not the row in the pool: go through the block table."
        return None

    return run_check(
        "check_block_table_lookup",
        fn,
        make_cases,
        compare_numbers(),
        diagnoses=(block_only, contiguous, position_as_block),
        hint="block = block_table[position // block_size]; slot = block x block_size + position % block_size.",
        error_hints={"list index out of range": "index the block table with position // block_size, not position."},
        quiet=quiet,
    )


# ----- the preemption choice ---------------------------------------------------------------------

# (running requests as (name, blocks held) in the order they were admitted, free blocks, who needs how many more)
PREEMPT_CASES = (
    ((("a", 1), ("b", 3), ("c", 1)), 0, "a", 1),
    ((("a", 2), ("b", 2), ("c", 1)), 0, "a", 2),
    ((("a", 1), ("b", 3), ("c", 1), ("d", 2)), 1, "b", 1),
    ((("a", 1), ("b", 1)), 0, "b", 1),
    ((("a", 3), ("b", 1)), 0, "a", 2),
)


def preempted_by_scheduler(running, free_blocks, requester, blocks_wanted) -> list[str]:
    """The package's answer: a real block manager and scheduler in that state, asked to make room."""
    block_size = 4
    manager = BlockManager(1 + sum(held for _, held in running) + free_blocks, block_size, enable_prefix_caching=False)
    scheduler = Scheduler(manager, max_num_seqs=len(running), max_num_batched_tokens=1024, stats=Stats())
    names = {}
    for seq_id, (name, held) in enumerate(running):
        seq = Sequence.from_prompt(seq_id, [0] * (held * block_size + blocks_wanted * block_size), 1)
        manager.allocate(seq, held * block_size)
        seq.num_computed_tokens = held * block_size
        scheduler.running.append(seq)
        names[seq_id] = name
    wanting = next(s for s in scheduler.running if names[s.seq_id] == requester)
    scheduler.make_room(wanting, blocks_wanted * block_size)
    return [names[s.seq_id] for s in reversed(scheduler.waiting)]  # in the order they were preempted


def check_preemption_choice(fn, *, quiet: bool = False):
    """``fn(running, free_blocks, requester, blocks_wanted)`` -> the names of the requests preempted, in order.

    ``running`` lists the running requests as (name, blocks held), oldest admission first. ``requester`` is
    running and needs ``blocks_wanted`` more blocks; ``free_blocks`` are free. Preempt (free every block of)
    the newest running request until enough blocks are free; if the requester itself is the newest left, it
    is preempted too and the search stops. [] when nothing needs to go."""

    def make_cases():
        cases = []
        for running, free, requester, wanted in PREEMPT_CASES:
            label = f"running={list(running)}, {free} free, {requester!r} wants {wanted} more"
            expected = preempted_by_scheduler(running, free, requester, wanted)
            cases.append(Case(label, (list(running), free, requester, wanted), expected))
        return cases

    def compare(got, expected):
        if not isinstance(got, (list, tuple)):
            return f"expected a list of names like {expected!r}, got {got!r}."
        return None if list(got) == expected else f"expected {expected!r}, got {list(got)!r}."

    def oldest_first(got, case):
        running = case.args[0]
        if isinstance(got, (list, tuple)) and got and got[0] == running[0][0] and got != case.expected:
            return "the NEWEST running request (admitted last) goes first: it has done the least work."
        return None

    def largest_first(got, case):
        biggest = max(case.args[0], key=lambda r: r[1])[0]
        if isinstance(got, (list, tuple)) and got and got[0] == biggest and got != case.expected:
            return "not the largest: vLLM's first-come-first-served policy takes the newest, whatever its size."
        return None

    return run_check(
        "check_preemption_choice",
        fn,
        make_cases,
        compare,
        diagnoses=(oldest_first, largest_first),
        hint="walk the running list from its end; each victim frees all its blocks; stop when enough are free or "
        "when the victim is the requester itself.",
        quiet=quiet,
    )


# ----- block hashing -----------------------------------------------------------------------------

HASH_CASES = (
    ([1, 2, 3, 4, 5, 6, 7], 2),
    ([5, 5, 5, 5], 4),
    ([9, 8, 7], 4),
    (list(range(70)), 32),
    ([3, 1, 4, 1, 5], 1),
)


def check_block_hashes(fn, *, quiet: bool = False):
    """``fn(token_ids, block_size)`` -> the names of the FULL blocks of a request, in order, each
    ``block_hash(parent, tokens)`` with parent = the previous block's name (None for the first block)."""
    from tinyformer.engine.block_manager import block_hash

    def make_cases():
        cases = []
        for tokens, b in HASH_CASES:
            manager = BlockManager(2, b)
            expected = manager.block_hashes(Sequence.from_prompt(0, tokens, 1), len(tokens) // b)
            cases.append(Case(f"{len(tokens)} tokens, blocks of {b}", (list(tokens), b), expected))
        return cases

    def compare(got, expected):
        if not isinstance(got, (list, tuple)):
            return f"expected a list of {len(expected)} hashes (bytes), got {type(got).__name__}."
        if len(got) != len(expected):
            return f"expected {len(expected)} hashes (one per full block), got {len(got)}."
        wrong = (
            next(i for i, (g, e) in enumerate(zip(got, expected, strict=True)) if g != e)
            if list(got) != expected
            else None
        )
        return None if wrong is None else f"block {wrong}'s hash differs."

    def partial_block(got, case):
        tokens, b = case.args
        if isinstance(got, (list, tuple)) and len(got) == -(-len(tokens) // b) and len(tokens) % b:
            return "a partly filled block gets no name yet (its tokens are still coming): hash full blocks only."
        return None

    def not_chained(got, case):
        tokens, b = case.args
        alone = [block_hash(None, tokens[i * b : (i + 1) * b]) for i in range(len(tokens) // b)]
        if isinstance(got, (list, tuple)) and list(got) == alone and len(alone) > 1:
            return (
                "each block's parent is the previous block's hash: that is what makes the name cover the whole prefix."
            )
        return None

    return run_check(
        "check_block_hashes",
        fn,
        make_cases,
        compare,
        diagnoses=(partial_block, not_chained),
        hint="parent = None; for each full block: parent = block_hash(parent, its tokens); collect the parents.",
        quiet=quiet,
    )
