"""The logits check every export passes before it is put in place: transformers loads the folder (offline) and
must give our model's logits, within a tolerance that scales with them.

Boundary: loading a written folder back and comparing. :func:`check_logits_match` is the comparison every format
uses (GPT-2, Llama, LLaVA); :func:`verify_export` loads a causal LM (GPT-2, Llama) with ``AutoModelForCausalLM``,
:func:`tinyformer.export.llava.verify_llava_export` a LLaVA folder with its processor.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.utils import logging as hf_logging

from tinyformer.config import ModelConfig
from tinyformer.model import Transformer, eval_mode

PROBE_SEED = 1234
VERIFY_ATOL = 1e-4  # float32: the same maths in a different order differs by ~1e-6 on unit-sized logits
# ... and by more on larger ones: rounding grows with the activations. Nano with its weights x8 (logits up to 39)
# differs by 7e-4 = 1.8e-5 of its largest logit; a wrong export differs by the logits' own size.
VERIFY_RTOL = 1e-4


class ExportVerificationError(RuntimeError):
    """The exported folder, loaded by transformers, does not reproduce the tinyformer model."""


def has_remote_code(folder: str | Path) -> bool:
    """Whether ``folder``'s config.json names classes shipped in the folder (``auto_map``)."""
    return "auto_map" in json.loads((Path(folder) / "config.json").read_text())


def probe_ids(config: ModelConfig, batch: int = 2) -> torch.Tensor:
    """Seeded random token ids [batch, n_positions]: every position row and many token rows get used."""
    generator = torch.Generator().manual_seed(PROBE_SEED)
    return torch.randint(0, config.vocab_size, (batch, config.n_positions), generator=generator)


@torch.inference_mode()
def verify_export(model: Transformer, tokenizer, folder: Path, atol: float = VERIFY_ATOL) -> float:
    """Load ``folder`` with transformers (offline) and check it reproduces ``model``; return the max logit gap."""
    trust = has_remote_code(folder)  # our own file, just written: the only remote code this ever trusts
    with no_transformers_progress_bars():  # a "Loading weights" bar per export would be noise
        hf_model = AutoModelForCausalLM.from_pretrained(
            folder, local_files_only=True, dtype=torch.float32, trust_remote_code=trust
        ).eval()
        hf_tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True, trust_remote_code=trust)
    text = " ".join(tokenizer.convert_ids_to_tokens(list(range(min(len(tokenizer), 32)))))
    if hf_tokenizer(text)["input_ids"] != tokenizer(text)["input_ids"]:
        raise ExportVerificationError(f"the exported tokenizer in {folder} encodes text differently from the original.")

    ids = probe_ids(model.config)  # [2, n_positions]
    with eval_mode(model):
        expected = model(ids.to(model.device)).float().cpu()  # [2, n_positions, V]
    got = hf_model(ids).logits.float()  # [2, n_positions, V]
    return check_logits_match(expected, got, atol, type(hf_model).__name__)


def check_logits_match(
    expected: torch.Tensor, got: torch.Tensor, atol: float, hf_class: str, rtol: float = VERIFY_RTOL
) -> float:
    """The largest logit gap between our model and transformers' ``hf_class`` loaded from an export; raise if it
    exceeds ``atol + rtol x`` the largest logit (the tolerance scales with the logits, as rounding does). Every
    export (GPT-2, LLaVA) verifies itself through this."""
    gap = (expected - got).abs().max().item()
    scale = expected.abs().max().item()
    tolerance = atol + rtol * scale
    if not gap <= tolerance:
        raise ExportVerificationError(
            f"transformers' {hf_class} loaded from the export gives logits up to {gap:.2e} away from the "
            f"tinyformer model (tolerance {tolerance:.1e} = {atol:.0e} + {rtol:.0e} x the largest logit "
            f"{scale:.3g}); the export does not reproduce the model."
        )
    return gap


@contextmanager
def no_transformers_progress_bars():
    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()
