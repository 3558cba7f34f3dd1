"""The model the serving lessons serve: the learner's trained model, exported for vLLM."""

from __future__ import annotations

from pathlib import Path

from tinyformer.paths import artifacts_dir, one_writer


def lesson_export(preset: str = "nano", *, progress: bool = True):
    """(model, tokenizer, export folder): the checkpoint the earlier lessons saved (trained now if there is
    none), as the Hugging Face GPT-2 folder ``artifacts/<preset>-hf`` that `tinyformer export` writes.

    The folder is written again only when it is missing or older than the checkpoint, so a server that
    is reading it (another notebook's, a classroom's) never sees it replaced for nothing."""
    from tinyformer.export import export_hf
    from tinyformer.train import load_or_train

    model, tokenizer = load_or_train(preset, progress=progress)
    checkpoint = artifacts_dir() / f"{preset}.pt"
    folder = artifacts_dir() / f"{preset}-hf"
    config = folder / "config.json"
    with one_writer(folder):  # two kernels or test workers asking at once: one of them exports
        if not config.is_file() or config.stat().st_mtime < checkpoint.stat().st_mtime:
            folder = export_hf(model, tokenizer, folder, overwrite=True)
    return model, tokenizer, Path(folder)
