"""The GPT-2 format (``GPT2LMHeadModel``) of an ``arch="gpt2"`` model: its config and its weights.

The model already uses GPT-2's parameter names, so the GPT-2 export is mostly bookkeeping:

* weights: the same names, but GPT-2 stores its projections as ``Conv1D`` with weight
  ``[in, out]`` where ``nn.Linear`` stores ``[out, in]``, so those four matrices are transposed;
  ``lm_head.weight`` is not written because it is tied to ``transformer.wte.weight``;
* config, generation config and tokenizer files come from transformers' own classes.

Boundary: GPT-2's names, layout and config, and the remote-code variant of its config. Writing the folder is
:func:`tinyformer.export.causal_lm.export_hf`.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import GPT2Config, GPT2LMHeadModel

from tinyformer.config import ModelConfig
from tinyformer.export.folder import REMOTE_CODE_FILE, special_token_ids
from tinyformer.model import Transformer

# nn.Linear weights that GPT-2 keeps in Conv1D layout [in, out].
CONV1D_WEIGHTS = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
TIED_WEIGHTS = ("lm_head.weight",)  # same tensor as transformer.wte.weight; GPT-2 re-ties it on load

# export_hf(..., remote_code=True): config.json names a config class shipped in the folder (``auto_map``) under a
# model_type transformers does not know, so transformers and vLLM run this file only when told to trust the folder
# (``trust_remote_code``). The weights stay GPT-2's: ``architectures`` still picks vLLM's own GPT-2 code. The print
# shows where the folder's code runs: whoever loads the folder with the flag executes the whole file.
REMOTE_MODEL_TYPE = "tinyformer-gpt2"
REMOTE_CODE_MARK = "tinyformer remote code ran in process"
REMOTE_CODE = f'''"""A config class shipped inside a model folder (tinyformer.export, remote_code=True)."""

import os
import sys

from transformers import GPT2Config, GPT2LMHeadModel

# Any Python may stand here; it runs in every process that loads this folder with trust_remote_code.
print(f"{REMOTE_CODE_MARK} {{os.getpid()}} ({{os.path.basename(sys.argv[0])}})", flush=True)


class TinyformerGPT2Config(GPT2Config):
    model_type = "{REMOTE_MODEL_TYPE}"


class TinyformerGPT2LMHeadModel(GPT2LMHeadModel):
    config_class = TinyformerGPT2Config
'''
REMOTE_AUTO_MAP = {
    "AutoConfig": "configuration_tinyformer.TinyformerGPT2Config",
    "AutoModelForCausalLM": "configuration_tinyformer.TinyformerGPT2LMHeadModel",
}


def gpt2_state_dict(model: Transformer) -> dict[str, torch.Tensor]:
    """GPT2LMHeadModel's state dict for ``model``: Linear weights transposed to Conv1D, tied head dropped."""
    state = {}
    for name, tensor in model.state_dict().items():
        if name in TIED_WEIGHTS:
            continue
        if name.endswith(CONV1D_WEIGHTS):
            tensor = tensor.t()  # nn.Linear [out, in] -> Conv1D [in, out]
        state[name] = tensor.detach().cpu().contiguous().clone()
    return state


def gpt2_config(config: ModelConfig, tokenizer=None) -> GPT2Config:
    """The GPT2Config describing the same architecture (token ids taken from ``tokenizer`` if given)."""
    ids = special_token_ids(tokenizer, config.vocab_size) if tokenizer is not None else {}
    return GPT2Config(
        architectures=["GPT2LMHeadModel"],
        vocab_size=config.vocab_size,
        n_positions=config.n_positions,
        n_ctx=config.n_positions,
        n_embd=config.n_embd,
        n_layer=config.n_layer,
        n_head=config.n_head,
        activation_function="gelu_new",  # tanh-approximate GELU, as in model.MLP
        layer_norm_epsilon=config.layer_norm_epsilon,
        resid_pdrop=config.dropout,
        embd_pdrop=config.dropout,
        attn_pdrop=config.dropout,
        tie_word_embeddings=True,
        dtype="float32",
        bos_token_id=ids.get("bos_token_id"),
        eos_token_id=ids.get("eos_token_id"),
        pad_token_id=ids.get("pad_token_id"),
    )


def to_hf_gpt2(model: Transformer, tokenizer=None) -> GPT2LMHeadModel:
    """An in-memory transformers GPT2LMHeadModel (eval mode) holding a copy of ``model``'s weights."""
    hf_model = GPT2LMHeadModel(gpt2_config(model.config, tokenizer))
    missing, unexpected = hf_model.load_state_dict(gpt2_state_dict(model), strict=False)
    if unexpected or set(missing) - set(TIED_WEIGHTS):
        raise ValueError(f"weight names do not match GPT-2: missing {missing}, unexpected {unexpected}.")
    hf_model.tie_weights()
    return hf_model.eval()


def write_remote_code(folder: Path) -> None:
    """REMOTE_CODE_FILE beside the weights, and config.json naming its class under a model_type of its own."""
    (folder / REMOTE_CODE_FILE).write_text(REMOTE_CODE)
    config = json.loads((folder / "config.json").read_text())
    config |= {"model_type": REMOTE_MODEL_TYPE, "auto_map": REMOTE_AUTO_MAP}
    (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
