"""tinyformer: build, train, cache, measure and serve a small GPT-style transformer by hand.

Lesson -> the modules it shows (each notebook imports these; ``checks`` holds every lesson's exercise checkers):

== ============================= =================================================================
00 setup check                   everything below, briefly
01 tokens and positions          ``tokenizer``, ``data`` (the corpus), ``model`` (wte, wpe), ``positions``
02 self-attention                ``model`` (CausalSelfAttention), ``widgets.attention_weights``
03 block and LM head             ``model`` (MLP, Block, lm_head), ``params``
04 training with SGD             ``train`` (the loop, presets' recipes), ``checkpoint``
05 generation and the KV cache   ``generate``, ``kv_cache``, ``widgets.kv_stepper``, ``export`` (GPT-2 folder)
06 memory budget                 ``memory`` (formulas, catalogue, planner, measure), ``widgets.attention_memory``,
                                 ``widgets.budget``
07 serving with vLLM             ``serving`` (server, client, command_lines), ``export``
08 max_model_len, KV capacity    ``vllm_rules`` (blocks, null block, capacity line, refusals),
                                 ``serving.budget`` (KVBudget), ``serving.vllm_log``, ``figures`` (the pool)
09 batching and concurrency      ``serving.client`` (load generator), ``serving.metrics``, ``serving.bench``
10 images are tokens (VLM)       ``vision`` (tokens, model, data: the pictures, train), ``export.llava``,
                                 ``serving.offline`` (vllm.LLM in the kernel)
11 fewer bits (quantisation)     ``quantize`` (int8/int4 weights), ``export.awq`` (the AWQ folder)
12 embeddings and retrieval      ``retrieval`` (pooling, collection, search, budget, finetune),
                                 ``serving.embeddings``, ``vllm_rules`` (pooling runner, chunked prefill)
13 the engine itself             ``engine`` (paged KV cache, scheduler, prefix caching, model runner,
                                 recorder), ``widgets.engine_stepper``, ``figures``
14 the Llama architecture        ``model`` (RMSNorm, SwiGLU, grouped-query attention), ``positions`` (rotary),
                                 ``export.llama`` (``LlamaForCausalLM``), ``memory`` (KV bytes of real models)
15 LoRA adapters                 ``lora`` (LoRALinear, fine-tune, merge, PEFT folder), ``serving.metrics``
16 speculative decoding          ``engine.speculative`` (SpeculativeEngine, the acceptance rule),
                                 ``serving.metrics`` (vLLM's spec-decode counters)
17 structured outputs            ``structured`` (regex -> NFA -> DFA -> token mask)
== ============================= =================================================================

Front ends over those: ``cli`` (``tinyformer train|export|serve|workshop|doctor``; ``command`` defines a
subcommand), ``widgets``, ``workshop`` (class server, student copies). vLLM's facts live in one place,
``vllm_rules``; byte formulas in ``memory.formulas``; where files go in ``paths``; Hugging Face folders in ``export``.
"""

# Names are imported from their home modules on first use: a process that needs only a light module (`make test`'s
# start count, `tinyformer --help`, the workshop commands) does not pay for torch and transformers (about 6 s on
# 2 cores) just because every submodule's import runs this file first.
from tinyformer.lazy import lazy_names

_HOMES = {
    "tinyformer.config": ("PRESETS", "VLLM_CPU_HEAD_SIZES", "HeadSizeWarning", "ModelConfig"),
    "tinyformer.data": ("Corpus", "TokenStream"),
    "tinyformer.export.causal_lm": ("export_hf",),
    "tinyformer.generate": ("generate", "generate_batch"),
    "tinyformer.kv_cache": ("KVCache",),
    "tinyformer.model": ("Transformer",),
    "tinyformer.tokenizer": ("build_tokenizer", "load_tokenizer"),
}
__getattr__, __dir__, __all__ = lazy_names(__name__, _HOMES)
