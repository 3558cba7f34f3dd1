"""Training the tiny VLM and its text-only baseline, their accuracy, and the trained pair kept under artifacts/
(lesson 10).

Boundary: the AdamW loop on caption cross-entropy, greedy captions scored per attribute against chance, and the
checkpoint (``load_or_train_vlm`` trains once, then loads while the recipe is today's). The model is
:mod:`tinyformer.vision.model`, the data :mod:`tinyformer.vision.data`.
"""

from __future__ import annotations

import hashlib
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from tinyformer import checkpoint
from tinyformer.config import ModelConfig
from tinyformer.model import Transformer
from tinyformer.paths import artifacts_dir, one_writer
from tinyformer.vision.data import (
    ATTRIBUTES,
    COLOURS,
    PLACES,
    PROMPT,
    SHAPES,
    Dataset,
    Scene,
    make_dataset,
    pictures,
    scenes,
    vlm_tokenizer,
)
from tinyformer.vision.model import VisionConfig, VisionLanguageModel, greedy
from tinyformer.vision.tokens import IMAGE_TOKEN


@dataclass(frozen=True)
class VLMTrainConfig:
    """Colour and place are learnt within a few hundred steps; square vs circle is the hard question. The two have
    nearly the same area (circle radius 1.15 r, square half-width r), so only the corners tell them apart: a few
    pixels that land anywhere inside an 8 px patch. Training first sits on a square-or-circle coin flip (a loss of
    ~0.09: ln 2 on the shape word of 2 pictures in 3, over 5 scored words). 400 steps on 3,000 pictures ended there
    (shape 38-70 % held-out on seeds 0-4); 1,200 steps on those 3,000 broke out on 4 seeds of 5 (seed 2: 69 %);
    10,000 pictures and 1,200 steps: 97-100 % on all five (benchmarks/vlm_shape_accuracy.py)."""

    steps: int = 1200
    batch_size: int = 64
    lr: float = 2e-3  # 3e-3 and above stalls at the blind-guess loss; 1e-3 needs twice the steps
    n_train: int = 10_000
    n_test: int = 300
    seed: int = 0


def build_vlm(tokenizer, vision: VisionConfig | None = None, preset: str = "nano", seed: int = 0):
    """A fresh VisionLanguageModel whose LM is the ``preset`` Transformer of lessons 01-05."""
    torch.manual_seed(seed)
    text = ModelConfig.preset(preset, vocab_size=len(tokenizer))
    return VisionLanguageModel(vision or VisionConfig(), text, tokenizer.convert_tokens_to_ids(IMAGE_TOKEN))


def train_vlm(model: nn.Module, train: Dataset, cfg: VLMTrainConfig, *, progress: bool = True) -> list[float]:
    """AdamW on caption cross-entropy (lesson 04's loop; AdamW because the image path trains in seconds with it).

    ``model`` is a VisionLanguageModel or, for the text-only baseline, a plain Transformer."""
    torch.manual_seed(cfg.seed)
    generator = torch.Generator().manual_seed(cfg.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.0)
    losses = []
    model.train()
    for _ in tqdm(range(cfg.steps), disable=not progress, desc="training", unit="step"):
        pick = torch.randint(len(train.ids), (cfg.batch_size,), generator=generator)
        inputs = (train.ids[pick], train.pixels[pick]) if isinstance(model, VisionLanguageModel) else (train.ids[pick],)
        logits = model(*inputs)  # [B, T, V]
        loss = F.cross_entropy(logits.flatten(0, 1), train.targets[pick].flatten(), ignore_index=-100)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    model.eval()
    return losses


def caption_words(model: nn.Module, test: Dataset, tokenizer) -> list[list[str]]:
    """The model's greedy caption (after "the") for every test row."""
    n_prompt = int((test.targets[0] == -100).sum()) - 1  # prompt = everything before the first scored target + 1
    ids = test.ids[:, : n_prompt + 1]
    eos = tokenizer.eos_token_id
    if isinstance(model, VisionLanguageModel):
        new = model.answer(ids, test.pixels, 5, eos)
    else:  # the text-only baseline: a plain Transformer
        new = greedy(model, ids, model.transformer.wte(ids), 5, eos)
    return [tokenizer.convert_ids_to_tokens(row) for row in new]


def accuracy(captions: list[list[str]], items: list[Scene]) -> dict[str, float]:
    """Fraction right per attribute, and for the whole caption (colour, shape, place, full stop)."""
    result = {}
    for i, name in enumerate(ATTRIBUTES):
        right = [len(c) > i and c[i] == s.attribute(name) for c, s in zip(captions, items, strict=True)]
        result[name] = sum(right) / len(items)
    whole = [c == s.caption()[len(PROMPT) :] for c, s in zip(captions, items, strict=True)]
    result["caption"] = sum(whole) / len(items)
    return result


def chance() -> dict[str, float]:
    """Accuracy of a blind guess per attribute (choices are uniform), and for the whole caption."""
    sizes = {"colour": len(COLOURS), "shape": len(SHAPES), "place": len(PLACES)}
    return {**{k: 1 / v for k, v in sizes.items()}, "caption": 1 / math.prod(sizes.values())}


@dataclass
class TrainedVLM:
    model: VisionLanguageModel
    baseline: Transformer
    tokenizer: object
    accuracy: dict[str, float]
    baseline_accuracy: dict[str, float]
    seconds: float  # training both models (0 when loaded from a checkpoint)
    loaded: bool = False


def train_pair(cfg: VLMTrainConfig, tokenizer, *, progress: bool = True) -> tuple[VisionLanguageModel, Transformer]:
    """The VLM, and the text-only baseline (the same LM, never shown a picture), trained on the same captions."""
    vision = VisionConfig()
    model = build_vlm(tokenizer, vision, seed=cfg.seed)
    train_vlm(model, make_dataset(cfg.n_train, cfg.seed, tokenizer, vision), cfg, progress=progress)
    baseline = build_vlm(tokenizer, vision, seed=cfg.seed).lm
    text_train = make_dataset(cfg.n_train, cfg.seed, tokenizer, vision, with_images=False)
    train_vlm(baseline, text_train, cfg, progress=progress)
    return model, baseline


def score_pair(model: VisionLanguageModel, baseline: Transformer, tokenizer, cfg: VLMTrainConfig):
    """(VLM accuracy, baseline accuracy) per attribute on ``cfg.n_test`` held-out pictures (other scenes and seed)."""
    test_set = make_dataset(cfg.n_test, cfg.seed + 1, tokenizer, model.vision.config)
    text_test = make_dataset(cfg.n_test, cfg.seed + 1, tokenizer, model.vision.config, with_images=False)
    return (
        accuracy(caption_words(model, test_set, tokenizer), test_set.scenes),
        accuracy(caption_words(baseline, text_test, tokenizer), text_test.scenes),
    )


def train_and_score(cfg: VLMTrainConfig = VLMTrainConfig(), *, progress: bool = True) -> TrainedVLM:
    """Train the VLM and the text-only baseline on the same captions; score both on held-out pictures."""
    tokenizer = vlm_tokenizer()
    start = time.perf_counter()
    model, baseline = train_pair(cfg, tokenizer, progress=progress)
    seconds = time.perf_counter() - start
    return TrainedVLM(model, baseline, tokenizer, *score_pair(model, baseline, tokenizer, cfg), seconds)


# ----- the trained pair, kept under artifacts/ ---------------------------------------------------------

VLM_FORMAT = "tinyformer-vlm-v1"


def vlm_recipe(cfg: VLMTrainConfig, tokenizer) -> dict:
    """What decides the trained weights: the training settings (not how many pictures are scored), the sizes, the
    vocabulary and a fingerprint of the generated pictures, so a change to any of them trains again."""
    vision = VisionConfig()
    probe = pictures(scenes(16, 0), 0, vision.image_size)  # any edit to the generator changes these bytes
    words = "\n".join(sorted(tokenizer.get_vocab()))
    return {
        "train": {k: v for k, v in asdict(cfg).items() if k != "n_test"},
        "vision": asdict(vision),
        "text": ModelConfig.preset("nano", vocab_size=len(tokenizer)).to_dict(),
        "vocabulary": hashlib.sha256(words.encode()).hexdigest(),
        "pictures": hashlib.sha256(probe.tobytes()).hexdigest(),
    }


def save_vlm(path: str | Path, model: VisionLanguageModel, baseline: Transformer, recipe: dict) -> Path:
    """Both models' weights and the recipe that trained them, written atomically."""
    payload = {
        "format": VLM_FORMAT,
        "config": config_dict(model),
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "baseline": {k: v.detach().cpu() for k, v in baseline.state_dict().items()},
        "recipe": recipe,
    }
    return checkpoint.save_atomically(path, payload)


def load_vlm(path: str | Path) -> tuple[VisionLanguageModel, Transformer, dict]:
    """(VLM, baseline, recipe) from a file ``save_vlm`` wrote, both in eval mode."""
    path = Path(path)
    payload = checkpoint.load_payload(path, VLM_FORMAT, ("config", "model", "baseline", "recipe"))
    config = payload["config"]
    try:
        text = ModelConfig.from_dict(config["text"])
        model = VisionLanguageModel(VisionConfig(**config["vision"]), text, config["image_token_id"])
        baseline = Transformer(text)
        model.load_state_dict(payload["model"])
        baseline.load_state_dict(payload["baseline"])
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise ValueError(f"checkpoint {path} does not match its own config: {e}. Delete it and train again.") from e
    return model.eval(), baseline.eval(), payload["recipe"]


def load_or_train_vlm(
    cfg: VLMTrainConfig = VLMTrainConfig(), *, path: str | Path | None = None, progress: bool = True
) -> TrainedVLM:
    """``train_and_score``, but the trained pair is kept in ``path`` (artifacts/vlm.pt) and reused while its recipe is
    today's. Accuracy is always measured now, on the loaded weights."""
    path = Path(path) if path is not None else artifacts_dir() / "vlm.pt"
    tokenizer = vlm_tokenizer()
    recipe = vlm_recipe(cfg, tokenizer)
    with one_writer(path):
        if path.is_file():
            model, baseline, saved_recipe = load_vlm(path)
            if saved_recipe == recipe:
                return TrainedVLM(model, baseline, tokenizer, *score_pair(model, baseline, tokenizer, cfg), 0.0, True)
            print(f"{path} was trained with another recipe than today's: training it again.")
        trained = train_and_score(cfg, progress=progress)
        save_vlm(path, trained.model, trained.baseline, recipe)
    return trained


def config_dict(model: VisionLanguageModel) -> dict:
    vision, text = asdict(model.vision.config), model.lm.config.to_dict()
    return {"vision": vision, "text": text, "image_token_id": model.image_token_id}
