"""The Llama format (``LlamaForCausalLM``) of an ``arch="llama"`` model: its config and its weights.

The Llama export renames (``c_attn`` splits into ``q_proj``, ``k_proj``, ``v_proj``) and reorders the rows of
``q_proj`` and ``k_proj`` within each head: our rotation (lesson 01) turns the pairs of dimensions (0, 1), (2, 3),
..., Hugging Face's and vLLM's Llama turn (0, hd/2), (1, hd/2 + 1), ... Listing each head's even dimensions first
then its odd ones makes their pairs ours; queries and keys are reordered alike, so every score q . k is unchanged.

Boundary: Llama's names, row order and config. Writing the folder is :func:`tinyformer.export.causal_lm.export_hf`.
"""

from __future__ import annotations

import torch
from transformers import LlamaConfig

from tinyformer.config import ModelConfig, hf_sizes
from tinyformer.export.folder import special_token_ids
from tinyformer.model import Transformer
from tinyformer.positions import ROPE_BASE


def llama_config(config: ModelConfig, tokenizer=None) -> LlamaConfig:
    """The LlamaConfig describing the same llama-arch model (token ids taken from ``tokenizer`` if given)."""
    ids = special_token_ids(tokenizer, config.vocab_size) if tokenizer is not None else {}
    return LlamaConfig(
        architectures=["LlamaForCausalLM"],
        # every size, max_position_embeddings included: RoPE has no table, it is the context vLLM serves
        **hf_sizes(config),
        rms_norm_eps=config.layer_norm_epsilon,
        rope_parameters={"rope_type": "default", "rope_theta": ROPE_BASE},
        hidden_act="silu",
        attention_bias=False,
        mlp_bias=False,
        attention_dropout=config.dropout,
        tie_word_embeddings=config.tie_word_embeddings,
        dtype="float32",
        bos_token_id=ids.get("bos_token_id"),
        eos_token_id=ids.get("eos_token_id"),
        pad_token_id=ids.get("pad_token_id"),
    )


def llama_state_dict(model: Transformer) -> dict[str, torch.Tensor]:
    """LlamaForCausalLM's state dict for a llama-arch ``model``: renamed, q/k rows reordered to rotate-half pairs."""
    config = model.config
    q_dim, kv_dim = config.n_embd, config.n_kv_head * config.head_dim
    t = model.transformer
    state = {"model.embed_tokens.weight": t.wte.weight, "model.norm.weight": t.ln_f.weight}
    if not config.tie_word_embeddings:
        state["lm_head.weight"] = model.lm_head.weight
    for i, block in enumerate(t.h):
        q, k, v = block.attn.c_attn.weight.split([q_dim, kv_dim, kv_dim])
        layer = f"model.layers.{i}"
        state |= {
            f"{layer}.input_layernorm.weight": block.ln_1.weight,
            f"{layer}.self_attn.q_proj.weight": pairs_to_halves(q, config.head_dim),
            f"{layer}.self_attn.k_proj.weight": pairs_to_halves(k, config.head_dim),
            f"{layer}.self_attn.v_proj.weight": v,
            f"{layer}.self_attn.o_proj.weight": block.attn.c_proj.weight,
            f"{layer}.post_attention_layernorm.weight": block.ln_2.weight,
            f"{layer}.mlp.gate_proj.weight": block.mlp.w_gate.weight,
            f"{layer}.mlp.up_proj.weight": block.mlp.w_up.weight,
            f"{layer}.mlp.down_proj.weight": block.mlp.c_proj.weight,
        }
    return {name: tensor.detach().cpu().contiguous().clone() for name, tensor in state.items()}


def pairs_to_halves(weight: torch.Tensor, head_dim: int) -> torch.Tensor:
    """Rows [heads x hd, d] of a q or k projection, each head's rows reordered 0, 2, 4, ..., 1, 3, 5, ...: our
    rotated pair (2i, 2i+1) becomes Hugging Face's rotate-half pair (i, i + hd/2), with the same frequency i."""
    order = torch.cat([torch.arange(0, head_dim, 2), torch.arange(1, head_dim, 2)])  # [hd]
    return weight.view(-1, head_dim, weight.shape[-1])[:, order].reshape(weight.shape)
