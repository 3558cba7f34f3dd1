"""The model the serving lessons serve: the learner's trained model, exported for vLLM."""

from __future__ import annotations

from pathlib import Path

from tinyformer.paths import artifacts_dir


def lesson_export(preset: str = "micro", *, progress: bool = True):
    """(model, tokenizer, export folder): the checkpoint the earlier lessons saved (trained now if there is
    none), written as a Hugging Face GPT-2 folder ``artifacts/<preset>-hf`` (what `tinyformer export` writes)."""
    from tinyformer.checkpoint import load_or_train
    from tinyformer.export import export_hf

    model, tokenizer = load_or_train(preset, progress=progress)
    folder: Path = export_hf(model, tokenizer, artifacts_dir() / f"{preset}-hf", overwrite=True)
    return model, tokenizer, folder
