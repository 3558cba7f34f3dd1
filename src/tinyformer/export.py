"""Export a tinyformer model as a Hugging Face folder that transformers and vLLM load offline: GPT-2
(``GPT2LMHeadModel``) for ``arch="gpt2"``, Llama (``LlamaForCausalLM``) for ``arch="llama"``.

The model already uses GPT-2's parameter names, so the GPT-2 export is mostly bookkeeping:

* weights: the same names, but GPT-2 stores its projections as ``Conv1D`` with weight
  ``[in, out]`` where ``nn.Linear`` stores ``[out, in]``, so those four matrices are transposed;
  ``lm_head.weight`` is not written because it is tied to ``transformer.wte.weight``;
* config, generation config and tokenizer files come from transformers' own classes.

The Llama export renames (``c_attn`` splits into ``q_proj``, ``k_proj``, ``v_proj``) and reorders the rows of
``q_proj`` and ``k_proj`` within each head: our rotation (lesson 01) turns the pairs of dimensions (0, 1), (2, 3),
..., Hugging Face's and vLLM's Llama turn (0, hd/2), (1, hd/2 + 1), ... Listing each head's even dimensions first
then its odd ones makes their pairs ours; queries and keys are reordered alike, so every score q . k is unchanged.

The folder is written into a temp folder beside ``out_dir``, loaded back with transformers and
compared with the tinyformer model, and only then renamed into place.
"""

from __future__ import annotations

import copy
import json
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GenerationConfig,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    PreTrainedTokenizerBase,
)
from transformers.utils import logging as hf_logging

from tinyformer.config import ModelConfig
from tinyformer.model import Transformer, eval_mode
from tinyformer.paths import current_umask
from tinyformer.positions import ROPE_BASE

# nn.Linear weights that GPT-2 keeps in Conv1D layout [in, out].
CONV1D_WEIGHTS = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
TIED_WEIGHTS = ("lm_head.weight",)  # same tensor as transformer.wte.weight; GPT-2 re-ties it on load

# The corpus has no roles, so a chat is just its messages' text joined by spaces; the model
# continues it. Enough for /v1/chat/completions to accept requests.
CHAT_TEMPLATE = "{% for message in messages %}{{ message['content'] | trim }} {% endfor %}"

# export_hf(..., remote_code=True): config.json names a config class shipped in the folder (``auto_map``) under a
# model_type transformers does not know, so transformers and vLLM run this file only when told to trust the folder
# (``trust_remote_code``). The weights stay GPT-2's: ``architectures`` still picks vLLM's own GPT-2 code. The print
# shows where the folder's code runs: whoever loads the folder with the flag executes the whole file.
REMOTE_CODE_FILE = "configuration_tinyformer.py"
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

PROBE_SEED = 1234
VERIFY_ATOL = 1e-4  # float32: the same maths in a different order differs by ~1e-6 on unit-sized logits
# ... and by more on larger ones: rounding grows with the activations. Nano with its weights x8 (logits up to 39)
# differs by 7e-4 = 1.8e-5 of its largest logit; a wrong export differs by the logits' own size.
VERIFY_RTOL = 1e-4


class ExportVerificationError(RuntimeError):
    """The exported folder, loaded by transformers, does not reproduce the tinyformer model."""


def hf_state_dict(model: Transformer) -> dict[str, torch.Tensor]:
    """The Hugging Face state dict of ``model``'s architecture (GPT-2 or Llama)."""
    if model.config.arch == "llama":
        return llama_state_dict(model)
    return gpt2_state_dict(model)


def hf_config(config: ModelConfig, tokenizer=None) -> GPT2Config | LlamaConfig:
    """The transformers config of ``config``'s architecture (GPT-2 or Llama)."""
    return llama_config(config, tokenizer) if config.arch == "llama" else gpt2_config(config, tokenizer)


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


def llama_config(config: ModelConfig, tokenizer=None) -> LlamaConfig:
    """The LlamaConfig describing the same llama-arch model (token ids taken from ``tokenizer`` if given)."""
    ids = special_token_ids(tokenizer, config.vocab_size) if tokenizer is not None else {}
    return LlamaConfig(
        architectures=["LlamaForCausalLM"],
        vocab_size=config.vocab_size,
        hidden_size=config.n_embd,
        intermediate_size=config.mlp_hidden,
        num_hidden_layers=config.n_layer,
        num_attention_heads=config.n_head,
        num_key_value_heads=config.n_kv_head,
        head_dim=config.head_dim,
        max_position_embeddings=config.n_positions,  # RoPE has no table; this is the context vLLM serves
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


def to_hf_gpt2(model: Transformer, tokenizer=None) -> GPT2LMHeadModel:
    """An in-memory transformers GPT2LMHeadModel (eval mode) holding a copy of ``model``'s weights."""
    hf_model = GPT2LMHeadModel(gpt2_config(model.config, tokenizer))
    missing, unexpected = hf_model.load_state_dict(hf_state_dict(model), strict=False)
    if unexpected or set(missing) - set(TIED_WEIGHTS):
        raise ValueError(f"weight names do not match GPT-2: missing {missing}, unexpected {unexpected}.")
    hf_model.tie_weights()
    return hf_model.eval()


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


@contextmanager
def atomic_folder(out_dir: str | Path, overwrite: bool):
    """Yield a temp folder beside ``out_dir`` to write a model folder into; on success it is renamed into place,
    on any error removed. Every export (GPT-2, LLaVA, AWQ) writes through this, so none leaves half a folder."""
    out_dir = Path(out_dir)
    _check_destination(out_dir, overwrite)
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


def write_remote_code(folder: Path) -> None:
    """REMOTE_CODE_FILE beside the weights, and config.json naming its class under a model_type of its own."""
    (folder / REMOTE_CODE_FILE).write_text(REMOTE_CODE)
    config = json.loads((folder / "config.json").read_text())
    config |= {"model_type": REMOTE_MODEL_TYPE, "auto_map": REMOTE_AUTO_MAP}
    (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


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
    with _no_transformers_progress_bars():  # a "Loading weights" bar per export would be noise
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
def _no_transformers_progress_bars():
    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


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
