"""Hugging Face folders that transformers and vLLM load: one module per format, one atomic write, one logits check.

causal_lm.py  export_hf: the text model's folder (config, weights, tokenizer, chat template), GPT-2 or Llama by arch
gpt2.py       GPT2LMHeadModel's config and weights (Conv1D transposes, the tied head), the remote-code variant
llama.py      LlamaForCausalLM's config and weights (q/k rows reordered to Hugging Face's rotate-half pairs)
llava.py      export_llava: lesson 10's VisionLanguageModel as LlavaForConditionalGeneration (CLIP + OPT)
awq.py        export_quantised: int4 weights in AWQ's packed layout with its quantization_config (lesson 11)
folder.py     what every format shares on disk: the atomic folder write, the files an export may hold, token ids
verify.py     the logits check every verified export passes: transformers loads the folder, logits must match

``from tinyformer.export import export_hf`` (or any name below): names are imported on first use from the module
that owns them, so this file is also the map of where each lives.
"""

from __future__ import annotations

from tinyformer.lazy import lazy_names

_HOMES = {
    "tinyformer.export.causal_lm": ("CHAT_TEMPLATE", "export_hf", "hf_config", "hf_state_dict", "write_hf_folder"),
    "tinyformer.export.gpt2": ("REMOTE_CODE_MARK", "REMOTE_MODEL_TYPE", "gpt2_config", "to_hf_gpt2"),
    "tinyformer.export.llama": ("llama_config", "pairs_to_halves"),
    "tinyformer.export.llava": ("export_llava", "verify_llava_export", "vllm_args"),
    "tinyformer.export.awq": ("SERVE_DTYPE", "awq_quantization_config", "export_quantised", "serve_dtype"),
    "tinyformer.export.folder": ("EXPORT_FILES", "REMOTE_CODE_FILE", "atomic_folder"),
    "tinyformer.export.verify": ("ExportVerificationError", "check_logits_match", "verify_export"),
}
__getattr__, __dir__, __all__ = lazy_names(__name__, _HOMES)
