"""Low-rank adapters (LoRA), written out: fine-tune a few small matrices beside frozen weights (lesson 15).

A projection ``y = W x`` with W [out, in] gets an update of rank r:

    y = W x + (alpha / r) * B (A x)        A [r, in] (seeded random), B [out, r] (zeros at first)

so an adapted model starts out exactly equal to its base, and training moves only A and B: r x (in + out) numbers
instead of out x in. ``merge_lora`` folds the update into W (W + (alpha / r) B A): a plain model, no extra work per
token. ``save_adapter`` writes the adapter alone in PEFT's folder format, which vLLM serves beside the base
model's Llama export (``tinyformer.export.llama``) and peft loads onto transformers' model.

Targets use the Llama export's module names (the ones PEFT and vLLM read): ``q_proj``, ``k_proj``, ``v_proj``,
``o_proj``, ``gate_proj``, ``up_proj``, ``down_proj``. Our attention computes q, k and v in one matrix
(``c_attn``), so an adapter on q_proj updates only q's rows of it. vLLM's GPT-2 class serves no LoRA, so only
llama-arch models are adapted here.

This module's boundary: adapters on a tinyformer Transformer and their PEFT folder. Training them is the ordinary
loop (``tinyformer.train.train``): frozen weights get no gradient, so the optimiser moves only A and B.
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import save_file

from tinyformer.data import Corpus, TokenStream
from tinyformer.export.folder import folder_written_in_one_step
from tinyformer.export.llama import pairs_to_halves
from tinyformer.model import Transformer
from tinyformer.train import TrainConfig, TrainResult, train

# Llama export name -> (our module inside a block, which rows of its output: "q", "k", "v" of c_attn, or all).
TARGETS: dict[str, tuple[str, str | None]] = {
    "q_proj": ("attn.c_attn", "q"),
    "k_proj": ("attn.c_attn", "k"),
    "v_proj": ("attn.c_attn", "v"),
    "o_proj": ("attn.c_proj", None),
    "gate_proj": ("mlp.w_gate", None),
    "up_proj": ("mlp.w_up", None),
    "down_proj": ("mlp.c_proj", None),
}
ATTENTION_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")  # Llama keeps these under self_attn, the rest under mlp
ROTATED_TARGETS = ("q_proj", "k_proj")  # the export reorders these rows (pairs -> halves); their B must follow
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
LORA_SEED = 0
# Fine-tuning an adapter on a dialect (lesson 15): AdamW, as adapters usually are trained; a few hundred steps of
# nano's 16 windows of 128 tokens.
ADAPTER_RECIPE = dict(steps=300, lr=1e-2, optimizer="adamw", batch_size=16, context_len=128, eval_every=100)


class LoRALinear(nn.Module):
    """A frozen ``nn.Linear`` plus one low-rank update per slice of its output rows.

    ``slices``: target name -> (first row, last row + 1) of the output it updates; a fused q/k/v matrix has up to
    three, any other projection one covering every row."""

    def __init__(self, base: nn.Linear, slices: dict[str, tuple[int, int]], rank: int, alpha: float, generator):
        super().__init__()
        self.base = base
        self.slices = dict(slices)
        self.rank, self.alpha = rank, alpha
        self.scaling = alpha / rank
        d_in = base.in_features
        # A: random, so that B's gradient is not zero at the start; B: zero, so the adapter starts as a no-op.
        # The scale of A is nn.Linear's default (Kaiming uniform), as in the LoRA paper's code and peft.
        bound = 1 / math.sqrt(d_in)
        self.lora_A = nn.ParameterDict(
            {name: nn.Parameter((torch.rand(rank, d_in, generator=generator) * 2 - 1) * bound) for name in slices}
        )  # each [r, in]
        self.lora_B = nn.ParameterDict(
            {name: nn.Parameter(torch.zeros(stop - start, rank)) for name, (start, stop) in slices.items()}
        )  # each [rows, r]

    def forward(self, x):
        y = self.base(x)  # [..., out] = W x
        for name, (start, stop) in self.slices.items():
            update = (x @ self.lora_A[name].T) @ self.lora_B[name].T  # [..., r] -> [..., rows]: B (A x)
            y = y + F.pad(self.scaling * update, (start, y.shape[-1] - stop))  # zeros outside this target's rows
        return y

    def delta(self) -> torch.Tensor:
        """The whole update (alpha / r) B A as one [out, in] matrix, zero on rows no target updates."""
        delta = torch.zeros_like(self.base.weight)
        for name, (start, stop) in self.slices.items():
            delta[start:stop] = self.scaling * self.lora_B[name] @ self.lora_A[name]  # [rows, r] @ [r, in]
        return delta


def add_lora(model: Transformer, *, rank: int = 4, alpha: float = 8.0, targets=("q_proj", "v_proj"), seed=LORA_SEED):
    """Put adapters of rank ``rank`` on ``targets`` in every layer of ``model`` (in place, like peft: deep-copy the
    model first to keep the base) and freeze every other weight; return the model."""
    targets = _check_lora_args(model, rank, alpha, targets)
    generator = torch.Generator().manual_seed(seed)
    config = model.config
    rows = {"q": (0, config.n_embd), "k": (config.n_embd, config.n_embd + config.n_kv_head * config.head_dim)}
    rows["v"] = (rows["k"][1], rows["k"][1] + config.n_kv_head * config.head_dim)
    for p in model.parameters():
        p.requires_grad_(False)
    for block in model.transformer.h:
        by_module: dict[str, dict[str, tuple[int, int]]] = {}
        for target in targets:
            module_name, part = TARGETS[target]
            linear = block.get_submodule(module_name)
            by_module.setdefault(module_name, {})[target] = rows[part] if part else (0, linear.out_features)
        for module_name, slices in by_module.items():
            parent, child = module_name.rsplit(".", 1)
            base = block.get_submodule(module_name)
            setattr(block.get_submodule(parent), child, LoRALinear(base, slices, rank, alpha, generator))
    return model


def finetune_adapter(
    base: Transformer, corpus: Corpus, tokenizer, *, rank=4, alpha=8.0, targets=tuple(TARGETS), progress=False, **recipe
) -> tuple[Transformer, TokenStream, TrainResult]:
    """A copy of ``base`` with adapters trained on ``corpus`` (e.g. a ``data.Dialect``) by the ordinary loop; ``base``
    itself is not touched. Returns (adapted model, the corpus's token stream, the loss history)."""
    adapted = add_lora(copy.deepcopy(base), rank=rank, alpha=alpha, targets=targets)
    stream = TokenStream(corpus, tokenizer, n_sentences=5_000)
    result = train(adapted, stream, TrainConfig(**{**ADAPTER_RECIPE, **recipe}), progress=progress)
    return adapted, stream, result


def lora_layers(model: Transformer) -> list[tuple[int, str, LoRALinear]]:
    """(layer index, module name inside the block, adapter) for every adapted projection of ``model``."""
    found = []
    for i, block in enumerate(model.transformer.h):
        found += [(i, name, m) for name, m in block.named_modules() if isinstance(m, LoRALinear)]
    return found


def adapter_state(model: Transformer) -> dict[str, torch.Tensor]:
    """The adapter's weights alone (A and B of every target), by our own names."""
    return {name: p for name, p in model.named_parameters() if ".lora_A." in name or ".lora_B." in name}


def merge_lora(model: Transformer) -> Transformer:
    """A copy of ``model`` without adapters, each adapted weight replaced by W + (alpha / r) B A: the same class
    and the same outputs, at the cost of the base model per token. ``model`` is not changed."""
    layers = _require_adapters(model, "merge_lora")
    merged = copy.deepcopy(model)
    for i, module_name, lora in lora_layers(merged):
        with torch.no_grad():
            lora.base.weight += lora.delta()
        parent, child = module_name.rsplit(".", 1)
        setattr(merged.transformer.h[i].get_submodule(parent), child, lora.base)
    assert len(lora_layers(merged)) == 0 < len(layers)
    for p in merged.parameters():
        p.requires_grad_(True)  # a plain model again, trainable like any other
    return merged.eval()


def peft_state_dict(model: Transformer) -> dict[str, torch.Tensor]:
    """The adapter under the names peft and vLLM read for our LlamaForCausalLM export, e.g.
    ``base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight`` [r, in] and ``...lora_B.weight`` [out, r].

    The export reorders each head's q and k rows (``export.pairs_to_halves``: W_hf = P W), so the update of those
    rows must be reordered alike: P (B A) = (P B) A, only B's rows move."""
    head_dim = model.config.head_dim
    state = {}
    for i, _, lora in lora_layers(model):
        for target in lora.slices:
            where = "self_attn" if target in ATTENTION_TARGETS else "mlp"
            prefix = f"base_model.model.model.layers.{i}.{where}.{target}"
            b = lora.lora_B[target]
            state[f"{prefix}.lora_A.weight"] = lora.lora_A[target]
            state[f"{prefix}.lora_B.weight"] = pairs_to_halves(b, head_dim) if target in ROTATED_TARGETS else b
    return {name: t.detach().cpu().contiguous().clone() for name, t in state.items()}


def adapter_config(model: Transformer, base_model: str = "") -> dict:
    """PEFT's adapter_config.json for ``model``'s adapters (every layer the same rank, alpha and targets)."""
    first = lora_layers(model)[0][2]
    targets = sorted({t for _, _, lora in lora_layers(model) for t in lora.slices})
    return {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model,
        "r": first.rank,
        "lora_alpha": first.alpha,
        "target_modules": targets,
        "lora_dropout": 0.0,
        "bias": "none",  # vLLM refuses LoRA biases
        "fan_in_fan_out": False,
        "use_rslora": False,  # scaling alpha / r, not alpha / sqrt(r)
        "modules_to_save": None,
        "inference_mode": True,
    }


def save_adapter(model: Transformer, out_dir: str | Path, *, base_model: str = "") -> Path:
    """Write ``model``'s adapters to ``out_dir`` as a PEFT folder (adapter_config.json, adapter_model.safetensors);
    return its path. ``base_model``: the base export's folder or name, recorded in the config.

    Atomic, as every export (export/folder.py): written into a temp folder beside ``out_dir`` and renamed into
    place; an existing folder is replaced only if it holds nothing but those two files."""
    _require_adapters(model, "save_adapter")
    out_dir = Path(out_dir)
    _check_adapter_destination(out_dir)
    with folder_written_in_one_step(out_dir) as tmp:
        (tmp / "adapter_config.json").write_text(json.dumps(adapter_config(model, base_model), indent=2) + "\n")
        save_file(peft_state_dict(model), tmp / "adapter_model.safetensors", metadata={"format": "pt"})
    return out_dir


def adapter_numbers(model: Transformer) -> dict[str, int]:
    """Parameters and float32 bytes of the adapter vs the whole model (counting the tied table once)."""
    adapter = sum(p.numel() for p in adapter_state(model).values())
    total = sum(p.numel() for p in model.parameters())
    return {
        "adapter_params": adapter,
        "base_params": total - adapter,
        "adapter_bytes": 4 * adapter,
        "base_bytes": 4 * (total - adapter),
    }


# ----- checks ------------------------------------------------------------------------------------------------------


def _check_lora_args(model, rank, alpha, targets) -> tuple[str, ...]:
    if not isinstance(model, Transformer):
        raise ValueError(f"add_lora needs a tinyformer Transformer, got {type(model).__name__}.")
    if model.config.arch != "llama":
        raise ValueError(
            f"add_lora needs a llama-arch model, got arch={model.config.arch!r}: vLLM's GPT2LMHeadModel serves no "
            "LoRA adapters. Build or load the model with arch='llama' (lesson 14)."
        )
    if lora_layers(model):
        raise ValueError("this model already has adapters: merge_lora(model) first, or start from the base model.")
    if not isinstance(rank, int) or isinstance(rank, bool) or rank <= 0:
        raise ValueError(f"rank must be a whole number above 0 (the lesson uses 4), got {rank!r}.")
    if rank > min(model.config.n_embd, model.config.head_dim * model.config.n_kv_head):
        raise ValueError(
            f"rank={rank} is not low: the smallest adapted matrix has only "
            f"{min(model.config.n_embd, model.config.head_dim * model.config.n_kv_head)} rows or columns."
        )
    if not isinstance(alpha, int | float) or isinstance(alpha, bool) or not math.isfinite(alpha) or alpha <= 0:
        raise ValueError(f"alpha must be a number above 0 (the update is scaled by alpha / rank), got {alpha!r}.")
    if isinstance(targets, str):
        targets = (targets,)
    targets = tuple(targets)
    unknown = [t for t in targets if t not in TARGETS]
    if unknown or not targets:
        raise ValueError(
            f"unknown LoRA target(s) {unknown or 'none given'}: choose from {list(TARGETS)} (the Llama export's "
            "projection names, which PEFT and vLLM use)."
        )
    if len(set(targets)) != len(targets):
        raise ValueError(f"targets {list(targets)} names a projection twice: give each once.")
    return targets


def _require_adapters(model, caller: str) -> list:
    if not isinstance(model, Transformer):
        raise ValueError(f"{caller} needs a tinyformer Transformer, got {type(model).__name__}.")
    layers = lora_layers(model)
    if not layers:
        raise ValueError(f"{caller}: this model has no adapters; add them with add_lora(model, ...) and train them.")
    return layers


def _check_adapter_destination(out_dir: Path) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"{out_dir} is a file, not an adapter folder; remove it or pick another path.")
    if out_dir.is_dir():
        foreign = sorted(p.name for p in out_dir.iterdir() if p.name not in ADAPTER_FILES or not p.is_file())
        if foreign:
            raise ValueError(
                f"refusing to replace {out_dir}: it holds {', '.join(foreign[:5])}, so it is not an adapter folder "
                f"(only {' and '.join(ADAPTER_FILES)}). Pick a new folder."
            )
