"""The learner's own serving engine (lesson 13): paged KV cache, continuous batching, preemption by
recompute and prefix caching, on the model the learner trained, checked against vLLM.

sequence.py       a request: its tokens, how many are cached, its block table
block_manager.py  the block pool: free queue (LRU), reference counts, the null block, prefix hashes
scheduler.py      waiting/running queues, the token budget, preemption, admission
kv_cache.py       the paged cache: one [num_blocks, block_size, nh, hd] tensor per layer for K and V
model_runner.py   one step of packed tokens through the model's weights, attention read through block tables
stats.py          counters and a per-step timeline
recorder.py       which blocks each request held and who waited, step by step (for pictures)
llm_engine.py     Engine: generate(prompts, max_new_tokens), step by step
speculative.py    SpeculativeEngine: a draft model proposes, the target verifies in one pass (lesson 16)
"""

from tinyformer.engine.block_manager import BlockManager, block_hash, blocks_needed
from tinyformer.engine.kv_cache import PagedKVCache, slot_of
from tinyformer.engine.llm_engine import Engine, Output
from tinyformer.engine.recorder import Share, StepSnapshot
from tinyformer.engine.scheduler import Scheduler
from tinyformer.engine.sequence import Sequence
from tinyformer.engine.speculative import SpecStats, SpeculativeEngine, accepted_tokens
from tinyformer.engine.stats import Stats, StepRecord

__all__ = [
    "BlockManager",
    "Engine",
    "Output",
    "PagedKVCache",
    "Scheduler",
    "Sequence",
    "Share",
    "SpecStats",
    "SpeculativeEngine",
    "Stats",
    "StepRecord",
    "StepSnapshot",
    "accepted_tokens",
    "block_hash",
    "blocks_needed",
    "slot_of",
]
