"""Checkers for the exercises in lessons 01-18: ``assert check_causal_mask(my_mask)``.

Each checker calls the learner's function on several seeded cases, compares with the answer the
package's own code gives, and prints ✅ or the first failing case (expected vs got, summarised) with a
hint for the usual mistakes. It never raises because of the learner's code and never prints a
solution. It returns a :class:`CheckResult`, truthy when every case passed.

| lesson | checkers |
| --- | --- |
| 01 tokens and positions | check_embedding_lookup, check_position_lookup, check_input_embedding |
| 02 self-attention | check_causal_mask, check_attention_scores, check_attention_mix, check_causal_attention |
| 03 block and LM head | check_mlp, check_block, check_lm_head |
| 04 training with SGD | check_lm_loss, check_sgd_step |
| 05 generation and KV cache | check_cache_append, check_greedy_next_token |
| 06 memory budget | check_kv_bytes_per_token, check_attention_scores_bytes, check_weight_bytes |
| 07 serving with vLLM | check_auth_header |
| 08 max_model_len and KV capacity | check_max_tokens_allowed, check_kv_blocks, check_kv_capacity |
| 09 batching and concurrency | check_left_pad, check_concurrency_to_fill_cache |
| 10 images are tokens | check_image_token_count, check_expand_placeholders, check_image_kv_bytes |
| 11 fewer bits | check_int8_round_trip, check_int4_pack, check_kv_bytes_fp8 |
| 12 embeddings and context budget | check_mean_pool, check_hamilton, check_parents_that_fit |
| 13 build the engine | check_blocks_needed, check_block_table_lookup, check_preemption_choice, check_block_hashes |
| 14 the Llama architecture | check_rotary, check_kv_head_of, check_kv_bytes_gqa |
| 15 LoRA adapters | check_lora_update |
| 16 speculative decoding | check_acceptance_rule |
| 17 structured outputs | check_token_step |
| 18 pipeline parallelism | check_stage_layers |
"""

from tinyformer.checks.attention import (
    check_attention_mix,
    check_attention_scores,
    check_causal_attention,
    check_causal_mask,
)
from tinyformer.checks.block import check_block, check_lm_head, check_mlp
from tinyformer.checks.core import CheckResult
from tinyformer.checks.embeddings import check_embedding_lookup, check_input_embedding, check_position_lookup
from tinyformer.checks.engine import (
    check_block_hashes,
    check_block_table_lookup,
    check_blocks_needed,
    check_preemption_choice,
)
from tinyformer.checks.generation import check_cache_append, check_greedy_next_token
from tinyformer.checks.llama import check_kv_bytes_gqa, check_kv_head_of, check_rotary
from tinyformer.checks.lora import check_lora_update
from tinyformer.checks.memory import check_attention_scores_bytes, check_kv_bytes_per_token, check_weight_bytes
from tinyformer.checks.quantize import check_int4_pack, check_int8_round_trip, check_kv_bytes_fp8
from tinyformer.checks.retrieval import check_hamilton, check_mean_pool, check_parents_that_fit
from tinyformer.checks.serving import (
    check_auth_header,
    check_concurrency_to_fill_cache,
    check_kv_blocks,
    check_kv_capacity,
    check_left_pad,
    check_max_tokens_allowed,
    check_stage_layers,
)
from tinyformer.checks.speculative import check_acceptance_rule
from tinyformer.checks.structured import check_token_step
from tinyformer.checks.training import check_lm_loss, check_sgd_step
from tinyformer.checks.vision import check_expand_placeholders, check_image_kv_bytes, check_image_token_count

__all__ = [
    "CheckResult",
    "check_acceptance_rule",
    "check_attention_mix",
    "check_attention_scores",
    "check_attention_scores_bytes",
    "check_auth_header",
    "check_block",
    "check_block_hashes",
    "check_block_table_lookup",
    "check_blocks_needed",
    "check_cache_append",
    "check_causal_attention",
    "check_causal_mask",
    "check_concurrency_to_fill_cache",
    "check_embedding_lookup",
    "check_expand_placeholders",
    "check_greedy_next_token",
    "check_hamilton",
    "check_image_kv_bytes",
    "check_image_token_count",
    "check_input_embedding",
    "check_int4_pack",
    "check_int8_round_trip",
    "check_kv_blocks",
    "check_kv_bytes_fp8",
    "check_kv_bytes_gqa",
    "check_kv_bytes_per_token",
    "check_kv_capacity",
    "check_kv_head_of",
    "check_lora_update",
    "check_left_pad",
    "check_lm_head",
    "check_lm_loss",
    "check_max_tokens_allowed",
    "check_mean_pool",
    "check_mlp",
    "check_parents_that_fit",
    "check_position_lookup",
    "check_preemption_choice",
    "check_rotary",
    "check_sgd_step",
    "check_stage_layers",
    "check_token_step",
    "check_weight_bytes",
]
