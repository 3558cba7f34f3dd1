"""The training loop, written out: sample a batch, forward, cross-entropy, backward, SGD step; and the
recipes later lessons use (train a preset and save it; load what lesson 04 saved, or train it now)."""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from tinyformer.checkpoint import load_checkpoint, save_checkpoint
from tinyformer.config import ModelConfig
from tinyformer.data import Corpus, TokenStream
from tinyformer.model import Transformer, eval_mode
from tinyformer.paths import artifacts_dir, check_writable, one_writer
from tinyformer.tokenizer import build_tokenizer


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 2500
    batch_size: int = 32
    context_len: int = 64  # tokens per training window (at most the model's n_positions)
    lr: float = 0.3
    momentum: float = 0.9
    optimizer: str = "sgd"  # "sgd" (the lesson) or "adamw" (for comparison)
    weight_decay: float = 0.0
    grad_clip: float | None = 1.0  # rescale gradients whose norm exceeds this (keeps big SGD steps stable)
    eval_every: int = 250
    eval_windows: int = 128
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "context_len", "eval_every", "eval_windows"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"TrainConfig.{name} must be a whole number above 0, got {value!r}.")
        if not isinstance(self.lr, int | float) or not math.isfinite(self.lr) or self.lr <= 0:
            raise ValueError(f"TrainConfig.lr must be a number above 0 (the lessons use 0.3), got {self.lr!r}.")
        if self.grad_clip is not None and (not isinstance(self.grad_clip, int | float) or not self.grad_clip > 0):
            raise ValueError(f"TrainConfig.grad_clip must be a number above 0 or None, got {self.grad_clip!r}.")

    @classmethod
    def for_preset(cls, preset: str, **overrides) -> TrainConfig:
        """The recipe that takes a preset to the corpus's Bayes floor (measured in benchmarks/)."""
        if preset not in RECIPES:
            raise ValueError(f"no training recipe for preset {preset!r}; choose one of {sorted(RECIPES)}.")
        return cls(**{**RECIPES[preset], **overrides})


# SGD with momentum 0.9 first learns word frequencies (~1.8 nats) and, a couple of thousand steps
# later, the subject-verb agreement that takes the loss down to the floor (~1.7 nats).
# nano trains on windows as long as its position table (128 tokens), so every position that the
# lessons generate at and vLLM serves (max_model_len = n_positions) has a trained row in wpe; 16
# windows of 128 keep the 2,048 tokens per step of the original 32 x 64.
RECIPES: dict[str, dict] = {
    "nano": dict(steps=2500, lr=0.3, context_len=128, batch_size=16),
    "micro": dict(steps=1500, lr=0.2),
    "pico": dict(steps=1500, lr=0.3, context_len=128, batch_size=16),  # a draft: good enough, not the floor
}


def weights_recipe(cfg: TrainConfig) -> dict:
    """The settings that decide the trained weights (how often we validate does not): saved with a checkpoint,
    so that `load_or_train` can tell a checkpoint of today's recipe from one of an older recipe."""
    return {k: v for k, v in asdict(cfg).items() if k not in ("eval_every", "eval_windows")}


@dataclass
class TrainResult:
    steps: list[int] = field(default_factory=list)  # step of each validation
    train_loss: list[float] = field(default_factory=list)  # every step
    val_loss: list[float] = field(default_factory=list)  # every eval_every steps
    seconds: float = 0.0

    @property
    def final_val_loss(self) -> float:
        return self.val_loss[-1]


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    raise ValueError(f"optimizer must be 'sgd' or 'adamw', got {cfg.optimizer!r}.")


def lm_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of the next token: logits [B, T, V], targets [B, T]."""
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten())  # over B*T predictions


@torch.inference_mode()
def evaluate(model: Transformer, stream: TokenStream, context_len: int, max_windows: int = 128) -> float:
    """Validation loss on a fixed set of windows (forward only, weights frozen)."""
    windows = stream.ids[stream.val_windows(context_len, max_windows)]  # [N, T + 1]
    windows = windows.to(model.device)  # evaluate where the model is
    with eval_mode(model):  # dropout off; training resumes in the mode it was in
        return lm_loss(model(windows[:, :-1]), windows[:, 1:]).item()


def train(
    model: Transformer,
    stream: TokenStream,
    cfg: TrainConfig = TrainConfig(),
    *,
    progress: bool = True,
    on_eval=None,
) -> TrainResult:
    """Train ``model`` in place and return the loss history.

    on_eval(step, train_loss, val_loss) is called after each validation (e.g. to redraw a plot).
    """
    if cfg.context_len > model.config.n_positions:
        raise ValueError(
            f"context_len={cfg.context_len} is longer than the position table (n_positions="
            f"{model.config.n_positions}); lower context_len or build a model with more positions."
        )
    torch.manual_seed(cfg.seed)
    generator = torch.Generator().manual_seed(cfg.seed)
    optimizer = make_optimizer(model, cfg)
    result = TrainResult()
    model.train()
    start = time.perf_counter()
    bar = tqdm(range(1, cfg.steps + 1), disable=not progress, desc="training", unit="step")
    for step in bar:
        batch = stream.batch("train", cfg.batch_size, cfg.context_len, generator)
        x, y = (t.to(model.device) for t in batch)  # [B, T] each, moved to the CPU or GPU the model is on
        loss = lm_loss(model(x), y)  # forward + cross-entropy
        optimizer.zero_grad(set_to_none=True)
        loss.backward()  # backprop: d loss / d every weight
        if cfg.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()  # SGD: w <- w - lr * (momentum-smoothed) gradient
        result.train_loss.append(loss.item())
        if step % cfg.eval_every == 0 or step == cfg.steps:
            val = evaluate(model, stream, cfg.context_len, cfg.eval_windows)
            result.steps.append(step)
            result.val_loss.append(val)
            bar.set_postfix(train=f"{loss.item():.3f}", val=f"{val:.3f}")
            if on_eval is not None:
                on_eval(step, loss.item(), val)
    result.seconds = time.perf_counter() - start
    model.eval()
    return result


# ----- recipes: a preset trained with its settings, and what later lessons load --------------------


def train_preset(
    preset: str,
    path: str | Path,
    *,
    seed: int = 0,
    steps: int | None = None,
    progress: bool = True,
    **architecture,
):
    """Train a preset on the shipped corpus with its recipe, save it to ``path``; return
    (model, tokenizer, TrainResult). Seeded: the same call gives the same weights on one machine.
    ``architecture``: ModelConfig overrides, e.g. ``arch="llama", n_kv_head=1`` (same sizes, same recipe)."""
    check_writable(path)  # before the minutes of training, not after
    tokenizer = build_tokenizer()
    config = ModelConfig.preset(preset, vocab_size=len(tokenizer), **architecture)  # refuse bad input before work
    torch.manual_seed(seed)
    model = Transformer(config)
    cfg = TrainConfig.for_preset(preset, seed=seed, **({"steps": steps} if steps else {}))
    result = train(model, TokenStream(Corpus(seed=seed), tokenizer), cfg, progress=progress)
    save_checkpoint(
        path,
        model,
        tokenizer,
        preset=preset,
        val_loss=result.final_val_loss,
        steps=cfg.steps,
        recipe=weights_recipe(cfg),
    )
    return model, tokenizer, result


def checkpoint_name(preset: str, arch: str = "gpt2") -> str:
    """The file name a preset's checkpoint gets in a folder: ``nano.pt``, or ``nano-llama.pt`` for another arch."""
    return f"{preset}.pt" if arch == "gpt2" else f"{preset}-{arch}.pt"


def load_or_train(preset: str = "nano", *, path: str | Path | None = None, progress: bool = True, **architecture):
    """(model, tokenizer): the checkpoint notebook 04 saved, or the same seeded training run now.

    Later lessons call this so each notebook also runs on its own in a fresh kernel. A checkpoint saved
    by an older recipe (e.g. nano before it trained all 128 positions) is trained again, not reused.
    ``architecture``: ModelConfig overrides (lesson 14: ``arch="llama"``, saved as ``nano-llama.pt``); a checkpoint
    of another architecture is trained again too."""
    wanted = ModelConfig.preset(preset, vocab_size=1, **architecture)  # the architecture fields to match
    path = Path(path) if path is not None else artifacts_dir() / checkpoint_name(preset, wanted.arch)
    with one_writer(path):
        if path.is_file():
            model, tokenizer, meta = load_checkpoint(path)
            same_arch = (model.config.arch, model.config.group_size) == (wanted.arch, wanted.group_size)
            if same_arch and meta.get("recipe") == weights_recipe(TrainConfig.for_preset(preset)):
                return model, tokenizer
            print(f"{path} was trained with another recipe or architecture than asked for: training it again.")
        model, tokenizer, _ = train_preset(preset, path, progress=progress, **architecture)
    return model.eval(), tokenizer
