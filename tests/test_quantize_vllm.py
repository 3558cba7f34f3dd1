"""vLLM's engine (CPU) and quantised checkpoints: the AWQ export runs on vLLM's int4 kernel and agrees with the
dequantised model; ``--quantization awq`` on a plain export, and fp8 on this CPU build, stop with vLLM's own messages.

vLLM's offline engine (vllm.LLM) in this process: the engine core and worker a server runs, without its API
process, so each case costs seconds once vLLM is imported instead of a server start (20-25 CPU-seconds). Lesson 11
serves the AWQ export and meets the awq refusal through real servers, and quotes the fp8 messages checked here."""

from __future__ import annotations

import pytest
import torch
from conftest import vllm_greedy

from tinyformer import ModelConfig, Transformer
from tinyformer import quantize as qz
from tinyformer.export import export_hf
from tinyformer.export.awq import SERVE_DTYPE, export_quantised
from tinyformer.serving.offline import llm_settings, offline_llm

pytestmark = pytest.mark.vllm
GROUP = 32
PROMPTS = ["the cat", "the dogs near the fox", "the bird with the goats", "the horse", "the mice under the lion"]


@pytest.fixture(scope="module")
def model(tokenizer) -> Transformer:
    """A random nano-sized model with large weights, so that a wrong layout or order would change every token."""
    torch.manual_seed(0)
    model = Transformer(ModelConfig.preset("nano", vocab_size=len(tokenizer)))
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.3)
    return model.eval()


def first_linear_kernel(model) -> str:
    """The class of the kernel vLLM picked for the first quantised linear layer of ``model`` (vLLM's module)."""
    method = next(m.quant_method for m in model.modules() if hasattr(getattr(m, "quant_method", None), "kernel"))
    return type(method.kernel).__name__


def test_vllm_runs_the_awq_export_like_the_dequantised_model(model, tokenizer, tmp_path):
    folder = export_quantised(model, tokenizer, tmp_path / "awq", group_size=GROUP)
    budget = dict(max_model_len=64, kv_cache_tokens=512)
    assert llm_settings(folder, **budget)["dtype"] == SERVE_DTYPE  # what the export needs, as `tinyformer serve`
    with offline_llm(folder, **budget) as llm:
        assert llm.apply_model(first_linear_kernel) == ["CPUWNA16LinearKernel"]  # vLLM's int4 kernel for CPUs
        replies = vllm_greedy(llm, PROMPTS, 10)
    dequantised = qz.dequantised_model(model, qz.quantise_model(model, "int4", GROUP))
    found = qz.greedy_agreement(dequantised, [tokenizer(p)["input_ids"] for p in PROMPTS], replies)
    assert found.explained, found  # any difference starts at a near-tie of the dequantised model
    assert found.identical >= 3, found


def test_quantization_awq_on_a_plain_export_fails_with_vllms_message(model, tokenizer, tmp_path):
    folder = export_hf(model, tokenizer, tmp_path / "plain", verify=False)
    with pytest.raises(ValueError, match="Cannot find the config file for awq"):
        with offline_llm(folder, max_model_len=64, kv_cache_tokens=256, extra_args=["--quantization", "awq"]):
            pass


def test_fp8_quantises_while_loading_but_this_cpu_build_has_no_kernel_for_it(model, tokenizer, tmp_path):
    """Unlike awq (files that must exist), --quantization fp8 asks vLLM to quantise an unquantised checkpoint as it
    loads it. It refuses float32 up front (fp8 runs beside 16-bit activations); in bfloat16 it loads the weights and
    calls its fp8 kernel, which the CPU wheel 0.32 does not have: its op there is a placeholder taking no
    arguments (measured 2026-12-06: the float32 refusal 9 s, the kernel error 19 s into the start). Lesson 11
    quotes both."""
    folder = export_hf(model, tokenizer, tmp_path / "plain", verify=False)
    for dtype, said in (
        ("float32", "torch.float32 is not supported for quantization method fp8"),
        ("bfloat16", "_C::static_scaled_fp8_quant() expected at most 0 argument(s)"),
    ):
        args = dict(max_model_len=64, kv_cache_tokens=256, extra_args=["--quantization", "fp8"])
        with pytest.raises((ValueError, RuntimeError)) as failure, offline_llm(folder, dtype=dtype, **args):
            pass
        assert said in str(failure.value), failure.value  # the config refused, or the op failing
