"""``export_hf``: a tinyformer model as a Hugging Face folder that transformers and vLLM load offline: GPT-2
(``GPT2LMHeadModel``, :mod:`tinyformer.export.gpt2`) for ``arch="gpt2"``, Llama (``LlamaForCausalLM``,
:mod:`tinyformer.export.llama`) for ``arch="llama"``.

The folder is written into a temp folder beside ``out_dir`` (:func:`tinyformer.export.folder.atomic_folder`),
loaded back with transformers and compared with the tinyformer model (:func:`tinyformer.export.verify.verify_export`),
and only then renamed into place.

Boundary: the text model's folder (config.json, generation_config.json, model.safetensors, tokenizer files and
chat template), with the format picked by the model's arch. The quantised variant is :mod:`tinyformer.export.awq`.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import GenerationConfig, GPT2Config, LlamaConfig, PreTrainedTokenizerBase

from tinyformer.config import ModelConfig
from tinyformer.export.folder import atomic_folder
from tinyformer.export.gpt2 import gpt2_config, gpt2_state_dict, write_remote_code
from tinyformer.export.llama import llama_config, llama_state_dict
from tinyformer.export.verify import verify_export
from tinyformer.model import Transformer

# The corpus has no roles, so a chat is just its messages' text joined by spaces; the model
# continues it. Enough for /v1/chat/completions to accept requests.
CHAT_TEMPLATE = "{% for message in messages %}{{ message['content'] | trim }} {% endfor %}"


def hf_state_dict(model: Transformer) -> dict[str, torch.Tensor]:
    """The Hugging Face state dict of ``model``'s architecture (GPT-2 or Llama)."""
    if model.config.arch == "llama":
        return llama_state_dict(model)
    return gpt2_state_dict(model)


def hf_config(config: ModelConfig, tokenizer=None) -> GPT2Config | LlamaConfig:
    """The transformers config of ``config``'s architecture (GPT-2 or Llama)."""
    return llama_config(config, tokenizer) if config.arch == "llama" else gpt2_config(config, tokenizer)


def export_hf(
    model: Transformer,
    tokenizer,
    out_dir: str | Path,
    *,
    overwrite: bool = False,
    verify: bool = True,
    chat_template: str | None = CHAT_TEMPLATE,
    remote_code: bool = False,
) -> Path:
    """Write ``model`` and ``tokenizer`` to ``out_dir`` as a Hugging Face GPT-2 folder; return its path.

    Atomic: everything is written and verified in a temp folder beside ``out_dir`` and renamed into
    place at the end, so a failed export leaves nothing behind. An existing ``out_dir`` is replaced
    only with ``overwrite=True`` (and only if it looks like a model folder).

    chat_template: the Jinja template /v1/chat/completions renders messages with (None: no template, and vLLM
        refuses chat requests). remote_code: ship the config class in the folder (REMOTE_CODE_FILE), which
        transformers and vLLM load only with ``trust_remote_code`` (GPT-2 exports only).
    """
    _check_inputs(model, tokenizer)
    if remote_code and model.config.arch != "gpt2":
        raise ValueError(f"remote_code=True ships a GPT-2 config class; this model's arch is {model.config.arch!r}.")
    if chat_template is not None and not isinstance(chat_template, str):
        raise ValueError(f"chat_template must be a Jinja template string or None, got {type(chat_template).__name__}.")
    model.config.check_vllm_head_size()  # refuse now rather than crash vLLM on its first request
    with atomic_folder(out_dir, overwrite) as tmp:
        write_hf_folder(model, tokenizer, tmp, chat_template=chat_template)
        if remote_code:
            write_remote_code(tmp)
        if verify:
            verify_export(model, tokenizer, tmp)
    return Path(out_dir)


def _check_inputs(model, tokenizer) -> None:
    if not isinstance(model, Transformer):
        raise ValueError(f"export_hf needs a tinyformer Transformer, got {type(model).__name__}.")
    if not isinstance(tokenizer, PreTrainedTokenizerBase):
        raise ValueError(
            f"export_hf needs the model's tokenizer (a transformers tokenizer, e.g. build_tokenizer() or the one "
            f"load_checkpoint returns), got {type(tokenizer).__name__}: vLLM cannot serve a folder without one."
        )
    if len(tokenizer) != model.config.vocab_size:
        raise ValueError(
            f"the tokenizer has {len(tokenizer)} tokens but the model's vocab_size is {model.config.vocab_size}: "
            "export the tokenizer the model was built with."
        )


def write_hf_folder(model: Transformer, tokenizer, folder: Path, *, chat_template: str | None = CHAT_TEMPLATE) -> None:
    """config.json, generation_config.json, model.safetensors and the tokenizer files."""
    config = hf_config(model.config, tokenizer)
    config.save_pretrained(folder)
    GenerationConfig(
        bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id, pad_token_id=config.pad_token_id
    ).save_pretrained(folder)
    save_file(hf_state_dict(model), folder / "model.safetensors", metadata={"format": "pt"})

    tokenizer = copy.deepcopy(tokenizer)  # don't change the caller's tokenizer
    tokenizer.model_max_length = model.config.n_positions  # servers read the context length from here too
    tokenizer.chat_template = chat_template
    tokenizer.save_pretrained(folder, save_jinja_files=False)  # template inside tokenizer_config.json
