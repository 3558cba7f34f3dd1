"""What every Hugging Face folder tinyformer writes shares (GPT-2, Llama, LLaVA, AWQ): the atomic write, the
files an export may hold, and the special token ids its config carries.

Boundary: files and folders only. A format's own config and weights are its module (:mod:`.gpt2`, :mod:`.llama`,
:mod:`.llava`, :mod:`.awq`); loading the folder back and comparing logits is :mod:`tinyformer.export.verify`.
"""

from __future__ import annotations

import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

from tinyformer.paths import current_umask

# The config class a GPT-2 export may ship beside its weights (export_hf(..., remote_code=True), export.gpt2).
REMOTE_CODE_FILE = "configuration_tinyformer.py"

# What an export folder may hold: the files save_pretrained writes for our GPT-2, AWQ and LLaVA exports (the
# set differs a little between transformers versions). `--overwrite` replaces only a folder of these files, so
# it never deletes a checkpoint, notes, or a folder that merely happens to contain a config.json.
EXPORT_FILES = frozenset(
    {
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "added_tokens.json",
        "vocab.json",
        "merges.txt",
        "chat_template.jinja",
        "chat_template.json",
        "processor_config.json",
        "preprocessor_config.json",
        REMOTE_CODE_FILE,
    }
)


def special_token_ids(tokenizer, vocab_size: int) -> dict[str, int | None]:
    """bos/eos/pad ids of ``tokenizer``, each checked to be a row of the model's embedding table."""
    if len(tokenizer) > vocab_size:
        raise ValueError(
            f"the tokenizer has {len(tokenizer)} tokens but the model's vocab_size is {vocab_size}: "
            "export the tokenizer the model was trained with."
        )
    ids = {
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    for key, value in ids.items():
        if value is not None and not 0 <= value < vocab_size:
            raise ValueError(f"tokenizer {key}={value} is not in the vocabulary 0..{vocab_size - 1}.")
    return ids


@contextmanager
def atomic_folder(out_dir: str | Path, overwrite: bool):
    """Yield a temp folder beside ``out_dir`` to write a model folder into; on success it is renamed into place,
    on any error removed. Every export (GPT-2, LLaVA, AWQ) writes through this, so none leaves half a folder."""
    out_dir = Path(out_dir)
    _check_destination(out_dir, overwrite)
    with folder_written_in_one_step(out_dir) as tmp:
        yield tmp


@contextmanager
def folder_written_in_one_step(out_dir: Path):
    """atomic_folder without the check of what ``out_dir`` holds now (the caller's: a LoRA adapter folder holds
    other files than an export)."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        yield tmp
        _follow_the_umask(tmp)
        _move_into_place(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _follow_the_umask(folder: Path) -> None:
    """Give the folder and its files the modes the umask gives any new file. mkdtemp makes an owner-only folder and
    safetensors' save_file an owner-only file (0600, whatever the umask), but other accounts serve an export: a
    JupyterHub's vLLM service runs as an account of its own (workshop/hub.py)."""
    mask = current_umask()
    folder.chmod(0o777 & ~mask)
    for item in folder.rglob("*"):
        item.chmod((0o777 if item.is_dir() else 0o666) & ~mask)


def _check_destination(out_dir: Path, overwrite: bool) -> None:
    if not out_dir.exists():
        return
    if not overwrite:
        raise FileExistsError(f"{out_dir} already exists; pass overwrite=True (CLI: --overwrite) or pick a new folder.")
    if not out_dir.is_dir():
        raise FileExistsError(f"{out_dir} is a file, not an export folder; remove it or pick another path.")
    foreign = sorted(p.name for p in out_dir.iterdir() if p.name not in EXPORT_FILES or not _is_plain_file(p))
    if foreign or (any(out_dir.iterdir()) and not (out_dir / "config.json").is_file()):
        what = f"it holds {', '.join(foreign[:5])}{' ...' if len(foreign) > 5 else ''}" if foreign else "no config.json"
        raise FileExistsError(
            f"refusing to replace {out_dir}: {what}, so it does not look like a model export (an export holds "
            "only files such as config.json, model.safetensors and tokenizer.json). Pick a new folder, or move "
            "what you want to keep out of it."
        )


def _is_plain_file(path: Path) -> bool:
    return path.is_file() and not path.is_symlink()


def _move_into_place(tmp: Path, out_dir: Path) -> None:
    """Rename the finished folder to ``out_dir``; an old export is moved aside first, then deleted."""
    old = None
    if out_dir.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=out_dir.parent))
        out_dir.rename(old / out_dir.name)
    try:
        tmp.rename(out_dir)
    except BaseException:
        if old is not None:  # put the previous export back
            (old / out_dir.name).rename(out_dir)
        raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
