"""One request as the engine sees it: its tokens, how many of them have keys and values in the cache,
and which cache blocks hold them (its block table).

A request never owns memory of its own: its keys and values live in the shared block pool
(:mod:`tinyformer.engine.block_manager`), and ``block_table[i]`` says which block holds its tokens
``i * block_size`` to ``(i + 1) * block_size - 1``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum, auto


class Status(Enum):
    WAITING = auto()  # in the queue: no blocks (new, or preempted and waiting to be recomputed)
    RUNNING = auto()  # holds blocks; gets tokens scheduled every step
    FINISHED = auto()


@dataclass(eq=False)  # compared by identity: two requests with the same prompt are still two requests
class Sequence:
    """A prompt and the tokens generated for it so far."""

    seq_id: int
    token_ids: list[int]  # prompt + generated tokens
    num_prompt_tokens: int
    max_new_tokens: int
    status: Status = Status.WAITING
    num_computed_tokens: int = 0  # tokens whose keys and values are in the cache
    block_table: list[int] = field(default_factory=list)  # block ids, in the order of the tokens they hold
    num_preemptions: int = 0
    cached_prompt_tokens: int = 0  # prompt tokens served from the prefix cache at first admission
    # NEW (speculative decoding, lesson 16): tokens a draft model proposed after token_ids, checked in the next
    # step. They are not the request's tokens yet: no block is named after them and they vanish if rejected.
    draft_ids: list[int] = field(default_factory=list)

    @classmethod
    def from_prompt(cls, seq_id: int, prompt: list[int], max_new_tokens: int) -> Sequence:
        return cls(seq_id, list(prompt), len(prompt), max_new_tokens)

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def output_ids(self) -> list[int]:
        return self.token_ids[self.num_prompt_tokens :]

    @property
    def is_finished(self) -> bool:
        return len(self.output_ids) >= self.max_new_tokens

    @property
    def num_uncomputed_tokens(self) -> int:
        """Tokens still to run through the model: the whole prompt at first, then one per decode step (plus the
        draft tokens to check, with speculative decoding)."""
        return self.num_tokens + len(self.draft_ids) - self.num_computed_tokens

    def scheduled_ids(self, start: int, stop: int) -> list[int]:
        """The token ids at positions start..stop-1, draft tokens included."""
        return (self.token_ids + self.draft_ids)[start:stop]

    def block_tokens(self, i: int, block_size: int) -> list[int]:
        """The token ids block ``i`` of this request holds (fewer than block_size for a partly filled block)."""
        return self.token_ids[i * block_size : (i + 1) * block_size]

    def __repr__(self) -> str:
        return (
            f"Sequence({self.seq_id}, {self.status.name}, tokens={self.num_tokens}, "
            f"computed={self.num_computed_tokens}, blocks={self.block_table})"
        )
