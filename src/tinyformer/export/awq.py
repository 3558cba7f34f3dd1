"""The AWQ format: a quantised checkpoint vLLM loads, the int4 weights in AWQ's packed layout, with its
quantization_config.

What makes a checkpoint "AWQ" is nothing but file contents, which is why ``--quantization awq`` on a
plain fp32 folder fails: vLLM looks for this config and these tensors and finds neither.

* ``config.json`` gains ``quantization_config``: ``{"quant_method": "awq", "bits": 4, "group_size": g,
  "zero_point": true, "version": "gemm"}``;
* each quantised layer (GPT-2's Conv1D layout: input rows, output columns) is stored as
  ``qweight`` int32 ``[in, out / 8]`` (eight 4-bit numbers per int32, AWQ's order), ``qzeros`` int32
  ``[in / g, out / 8]`` (packed the same way), ``scales`` fp16 ``[in / g, out]`` and its fp32 ``bias``;
* everything else (embeddings, the tied LM head, layer norms) is written as in :func:`tinyformer.export.export_hf`.

vLLM 0.32 runs such layers on CPU with its W4A16 kernel (``CPUWNA16LinearKernel``), which needs input and
output widths that are multiples of 32 and activations in bf16 or fp16 (see :data:`SERVE_DTYPE`).

Boundary: AWQ's tensors and quantization_config on top of :func:`tinyformer.export.causal_lm.write_hf_folder`,
written through :func:`tinyformer.export.folder.atomic_folder`. The quantisation itself is :mod:`tinyformer.quantize`.
Unlike the other formats it is not loaded back to compare logits: transformers loads AWQ only through gptqmodel,
which the suite does not install; tests/test_quantize_vllm.py compares vLLM's tokens with the dequantised model.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from tinyformer import quantize
from tinyformer.export.causal_lm import hf_state_dict, write_hf_folder
from tinyformer.export.folder import atomic_folder
from tinyformer.model import Transformer

SERVED_SCHEMES = ("int4",)  # what vLLM 0.32 runs on CPU from a checkpoint (its CPU kernel is 4-bit only)
CPU_KERNEL_MULTIPLE = 32  # CPUWNA16LinearKernel: input and output widths must be multiples of this
# Serve with --dtype float16. Measured with vLLM 0.32 on an AVX-512/AMX CPU: in bfloat16 the kernel takes its
# AMX path, which quantises the activations to int8 too (VLLM_CPU_INT4_W4A8=1, the default), or, with that
# switched off, died with SIGILL; in float16 it runs the plain W4A16 path, within fp16 rounding of the
# dequantised weights.
SERVE_DTYPE = "float16"


def awq_quantization_config(group_size: int) -> dict:
    return {"quant_method": "awq", "bits": 4, "group_size": group_size, "zero_point": True, "version": "gemm"}


def awq_tensors(name: str, layer: quantize.QuantisedLinear) -> dict[str, torch.Tensor]:
    """``NAME.qweight``, ``NAME.qzeros``, ``NAME.scales`` of one int4 layer, transposed to Conv1D [in, out]."""
    if layer.scheme != "int4":
        raise ValueError(f"AWQ stores int4 weights; {name} is {layer.scheme}.")
    return {
        f"{name}.qweight": quantize.pack_int4(layer.q.t().contiguous()),  # [in, out] -> int32 [in, out / 8]
        f"{name}.qzeros": quantize.pack_int4(layer.zero.t().contiguous()),  # [G, out] -> int32 [G, out / 8]
        f"{name}.scales": layer.scale.t().contiguous(),  # fp16 [G, out]
    }


def awq_state_dict(model: Transformer, layers: dict[str, quantize.QuantisedLinear]) -> dict[str, torch.Tensor]:
    """The export's tensors with each quantised layer's ``weight`` replaced by its AWQ tensors."""
    state = hf_state_dict(model)
    for name, layer in layers.items():
        del state[f"{name}.weight"]
        state.update(awq_tensors(name, layer))
    return state


def serve_dtype(model_dir: str | Path) -> str:
    """The --dtype to serve an export with: float32 for a plain one, SERVE_DTYPE for a quantised one."""
    from tinyformer.serving.budget import read_config_json

    if not (Path(model_dir) / "config.json").is_file():
        return "float32"  # not an export: the server reports what is missing
    return SERVE_DTYPE if "quantization_config" in read_config_json(model_dir) else "float32"


def check_servable(model: Transformer, scheme: str, group_size: int) -> None:
    """Refuse, before writing anything, what vLLM's CPU kernel would refuse at load."""
    quantize.check_scheme(scheme)
    if scheme not in SERVED_SCHEMES:
        raise ValueError(
            f"vLLM 0.32 serves quantised checkpoints on CPU with a 4-bit kernel only; {scheme} weights can be "
            "computed (quantise_model) but not exported for it. Use --quantize int4."
        )
    for name in quantize.quantised_layer_names(model):
        layer = model.get_submodule(name)
        quantize.check_group_size(group_size, layer.in_features)
        if layer.in_features % CPU_KERNEL_MULTIPLE or layer.out_features % CPU_KERNEL_MULTIPLE:
            raise ValueError(
                f"{name} is [{layer.out_features}, {layer.in_features}]; vLLM's CPU int4 kernel needs both widths "
                f"to be multiples of {CPU_KERNEL_MULTIPLE}. Use n_embd a multiple of {CPU_KERNEL_MULTIPLE}."
            )


def export_quantised(
    model: Transformer,
    tokenizer,
    out_dir: str | Path,
    *,
    scheme: str = "int4",
    group_size: int | None = None,
    overwrite: bool = False,
) -> Path:
    """Write ``model`` quantised (AWQ int4) as a folder vLLM loads; atomic, like ``export_hf``."""
    model.config.check_vllm_head_size()
    group_size = quantize.default_group_size(model) if group_size is None else group_size
    check_servable(model, scheme, group_size)
    layers = quantize.quantise_model(model, scheme, group_size)
    with atomic_folder(out_dir, overwrite) as tmp:
        write_hf_folder(model, tokenizer, tmp)
        save_file(awq_state_dict(model, layers), tmp / "model.safetensors", metadata={"format": "pt"})
        config = json.loads((tmp / "config.json").read_text())
        config["quantization_config"] = awq_quantization_config(group_size)
        config["dtype"] = SERVE_DTYPE  # the AWQ kernels take bf16 or fp16 activations, not fp32
        (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return Path(out_dir)
