"""Images are tokens: a tiny vision-language model written out by hand (lesson 10).

* **Patch embedding.** An image [3, H, W] is cut into (H/p) x (W/p) patches of p x p pixels; each patch,
  flattened to 3·p·p numbers, is multiplied by ONE matrix [3·p·p, d]: lesson 01's token table, with a
  patch's pixels in place of a one-hot id. A learned class vector (CLS) goes in front and a position
  table [N + 1, d] is added, row by row: lesson 01's position table.
* **Vision transformer.** Lesson 02/03's :class:`~tinyformer.model.Block`, unchanged, run with every
  patch allowed to see every other patch: no causal mask.
* **Projector and placeholders (the LLaVA scheme).** Two linear layers map each patch vector to the
  language model's width; the prompt holds one ``<image>`` token per image, expanded to one placeholder
  per image token, and the placeholders' rows of the token table are replaced by the image vectors.
* **Language model.** tinyformer's :class:`~tinyformer.model.Transformer`, as in lessons 01-05.

Every computation matches what transformers' ``LlavaForConditionalGeneration`` does with a CLIP vision
tower and an OPT language model (pre-LN, tanh GELU, CLS dropped: ``vision_feature_select_strategy
= "default"``), so :mod:`tinyformer.vision_export` is a renaming of weights, verified logit for logit.

Boundary: the model, the generated pictures and captions, training and accuracy, token counts. Writing the
Hugging Face folder is :mod:`tinyformer.vision_export`; serving is :class:`tinyformer.serving.VLLMServer`.
"""

from __future__ import annotations

import hashlib
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from tinyformer import checkpoint, data, memory
from tinyformer.config import ModelConfig
from tinyformer.model import Block, Transformer, eval_mode
from tinyformer.paths import artifacts_dir, one_writer
from tinyformer.tokenizer import build_tokenizer

IMAGE_TOKEN = "<image>"
IMAGE_MEAN = IMAGE_STD = 0.5  # pixels / 255 -> (x - 0.5) / 0.5, in [-1, 1]

# The pictures: one shape of one colour in one place, on a noisy dark background.
COLOURS = {"red": (220, 50, 40), "green": (40, 190, 60), "blue": (50, 90, 235)}
SHAPES = ("square", "circle", "triangle")
PLACES = {"left": (9, 16), "right": (23, 16), "top": (16, 9), "bottom": (16, 23)}  # shape centre (x, y) in pixels
SHAPE_RADIUS = (5.5, 7.0)  # half-width of a shape in pixels at 32 px: about 1.5 patches
ATTRIBUTES = ("colour", "shape", "place")
VISION_WORDS = [*COLOURS, *SHAPES, *PLACES]
PROMPT = ["the"]  # the caption's first word: the model says the rest, "red circle left ."


# ----- counting image tokens ------------------------------------------------------------------


def patches_per_image(image_size: int, patch_size: int) -> int:
    """(image_size / patch_size)² patches: one token each."""
    if image_size <= 0 or patch_size <= 0 or image_size % patch_size:
        raise ValueError(
            f"image_size={image_size} must be a positive multiple of patch_size={patch_size}: "
            "the patches tile the image exactly."
        )
    return (image_size // patch_size) ** 2


def image_tokens(
    image_size: int,
    patch_size: int,
    *,
    cls: bool = True,
    drop_cls: bool = True,
    pixel_shuffle: int = 1,
    crops: int = 1,
) -> int:
    """Tokens one image puts into the language model's sequence.

    cls: the vision tower puts a class vector in front of the patches (CLIP does).
    drop_cls: ``vision_feature_select_strategy="default"`` (LLaVA) hands only the patch vectors to the LM.
    pixel_shuffle: merge each s x s group of neighbouring patches into one token (s² fewer tokens; InternVL,
        Idefics3 and SmolVLM do this).
    crops: the image is also cut into this many tiles, each run through the tower on its own (each tile costs
        as much as a whole image; Phi-3.5-vision's ``num_crops``, LLaVA-NeXT's tiles).
    """
    grid = image_size // patch_size
    patches_per_image(image_size, patch_size)  # validates the sizes
    if pixel_shuffle <= 0 or grid % pixel_shuffle:
        raise ValueError(f"pixel_shuffle={pixel_shuffle} must divide the {grid} x {grid} patch grid.")
    if crops <= 0:
        raise ValueError(f"crops must be a positive integer, got {crops}.")
    per_view = (grid // pixel_shuffle) ** 2 + (1 if cls and not drop_cls else 0)
    return crops * per_view


def expand_placeholders(ids: list[int], image_token_id: int, tokens_per_image: int) -> list[int]:
    """Each ``<image>`` id becomes ``tokens_per_image`` copies of itself: one slot per image vector."""
    if tokens_per_image <= 0:
        raise ValueError(f"tokens_per_image must be positive, got {tokens_per_image}.")
    out = []
    for i in ids:
        out.extend([i] * tokens_per_image if i == image_token_id else [i])
    return out


def image_kv_bytes(n_images: int, tokens_per_image: int, n_layer: int, n_kv_heads: int, head_dim: int, dtype=4) -> int:
    """KV-cache bytes the image tokens of one request take: they are tokens like any other."""
    return memory.kv_cache_bytes(n_images * tokens_per_image, n_layer, n_kv_heads, head_dim, dtype)


# ----- the model ------------------------------------------------------------------------------


@dataclass(frozen=True)
class VisionConfig:
    """Sizes of the vision tower (attribute names shared with ModelConfig, so model.Block takes it)."""

    image_size: int = 32
    patch_size: int = 8
    n_embd: int = 64
    n_layer: int = 1
    n_head: int = 2
    dropout: float = 0.0
    layer_norm_epsilon: float = 1e-5

    def __post_init__(self) -> None:
        patches_per_image(self.image_size, self.patch_size)
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd={self.n_embd} is not divisible by n_head={self.n_head}.")

    arch: ClassVar[str] = "gpt2"  # the ViT block is GPT-2's: LayerNorm, a GELU MLP, a K/V head per query head

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def n_kv_head(self) -> int:
        return self.n_head

    @property
    def mlp_hidden(self) -> int:
        return 4 * self.n_embd  # GPT-2's MLP width, as ModelConfig.mlp_hidden gives for arch="gpt2"

    @property
    def n_patches(self) -> int:
        return patches_per_image(self.image_size, self.patch_size)

    @property
    def image_tokens(self) -> int:
        """Tokens per image in the LM's sequence: the patches (CLS dropped)."""
        return image_tokens(self.image_size, self.patch_size)


def patchify(pixels: torch.Tensor, patch_size: int) -> torch.Tensor:
    """[B, 3, H, W] -> [B, N, 3·p·p]: patches row by row, each flattened channel, row, column."""
    B, C, H, W = pixels.shape
    p = patch_size
    x = pixels.view(B, C, H // p, p, W // p, p)  # [B, C, gh, p, gw, p]
    x = x.permute(0, 2, 4, 1, 3, 5)  # [B, gh, gw, C, p, p]
    return x.reshape(B, (H // p) * (W // p), C * p * p)  # [B, N, 3·p·p]


class VisionTower(nn.Module):
    """Pixels [B, 3, H, W] -> one vector per patch, plus CLS in front: [B, N + 1, d]."""

    def __init__(self, config: VisionConfig):
        super().__init__()
        self.config = config
        d, p = config.n_embd, config.patch_size
        self.patch_embedding = nn.Linear(3 * p * p, d, bias=False)  # THE patch table: [3·p·p] pixels -> [d]
        self.class_embedding = nn.Parameter(0.02 * torch.randn(d))  # CLS: one learned vector, no pixels
        self.position_embedding = nn.Embedding(config.n_patches + 1, d)  # [N + 1, d], row 0 for CLS
        self.pre_layrnorm = nn.LayerNorm(d, eps=config.layer_norm_epsilon)  # (CLIP's spelling)
        self.h = nn.ModuleList(Block(config) for _ in range(config.n_layer))

    def forward(self, pixels: torch.Tensor, return_attention: bool = False):
        self._check_pixels(pixels)
        patches = patchify(pixels, self.config.patch_size)  # [B, N, 3·p·p]
        x = self.patch_embedding(patches)  # [B, N, d], one row per patch
        cls = self.class_embedding.expand(x.shape[0], 1, -1)  # [B, 1, d]
        x = torch.cat([cls, x], dim=1) + self.position_embedding.weight  # [B, N + 1, d]
        x = self.pre_layrnorm(x)
        n = x.shape[1]
        # Unlike text, a patch may look at patches "after" it: the whole image is there at once.
        allowed = torch.ones(1, 1, n, n, dtype=torch.bool, device=x.device)  # [1, 1, N+1, N+1]
        attentions = []
        for block in self.h:
            x, weights = block(x, allowed, need_weights=return_attention)  # [B, N + 1, d]
            attentions.append(weights)
        return (x, attentions) if return_attention else x

    def _check_pixels(self, pixels) -> None:
        size = self.config.image_size
        if not isinstance(pixels, torch.Tensor) or pixels.dim() != 4 or tuple(pixels.shape[1:]) != (3, size, size):
            shape = list(pixels.shape) if isinstance(pixels, torch.Tensor) else type(pixels).__name__
            raise ValueError(
                f"pixels must be a float tensor [images, 3, {size}, {size}], got {shape}; "
                "turn pictures into pixels with tinyformer.vision.to_pixels."
            )


class VisionLanguageModel(nn.Module):
    """A vision tower, a projector and a tinyformer Transformer, glued by placeholder tokens."""

    def __init__(self, vision: VisionConfig, text: ModelConfig, image_token_id: int):
        super().__init__()
        if not 0 <= image_token_id < text.vocab_size:
            raise ValueError(f"image_token_id={image_token_id} is not in the vocabulary 0..{text.vocab_size - 1}.")
        self.image_token_id = image_token_id
        self.vision = VisionTower(vision)
        self.projector = nn.Sequential(  # patch vector [dv] -> a vector the LM reads like a token [d]
            nn.Linear(vision.n_embd, text.n_embd), nn.GELU(), nn.Linear(text.n_embd, text.n_embd)
        )
        self.lm = Transformer(text)

    @property
    def tokens_per_image(self) -> int:
        return self.vision.config.image_tokens

    def image_vectors(self, pixels: torch.Tensor) -> torch.Tensor:
        """[n_images, 3, H, W] -> [n_images, N, d_text]: what fills each image's placeholders."""
        patches = self.vision(pixels)[:, 1:]  # [n, N, dv], CLS dropped ("default" strategy)
        return self.projector(patches)  # [n, N, d]

    def embed(self, ids: torch.Tensor, pixels: torch.Tensor | None) -> torch.Tensor:
        """Token vectors [B, T, d]: rows of the token table, with placeholders replaced by image vectors.

        ``pixels`` holds the images of the whole batch in the order their placeholders appear."""
        vectors = self.lm.transformer.wte(ids)  # [B, T, d]
        slots = ids == self.image_token_id  # [B, T]
        n_images = 0 if pixels is None else pixels.shape[0]
        if int(slots.sum()) != n_images * self.tokens_per_image:
            raise ValueError(
                f"the prompt has {int(slots.sum())} {IMAGE_TOKEN} placeholders but {n_images} image(s) x "
                f"{self.tokens_per_image} tokens = {n_images * self.tokens_per_image} image vectors: expand each "
                f"{IMAGE_TOKEN} with expand_placeholders(ids, image_token_id, {self.tokens_per_image})."
            )
        if n_images == 0:
            return vectors
        images = self.image_vectors(pixels).flatten(0, 1)  # [n * N, d], in placeholder order
        return vectors.masked_scatter(slots[..., None], images.to(vectors.dtype))  # [B, T, d]

    def forward(self, ids: torch.Tensor, pixels: torch.Tensor | None = None, *, return_attention: bool = False):
        """Logits [B, T, V] (and the LM's attention weights per layer with ``return_attention``)."""
        return self.lm(ids, embeds=self.embed(ids, pixels), return_attention=return_attention)

    def answer(self, ids: torch.Tensor, pixels: torch.Tensor | None, max_new_tokens: int, eos_token_id: int):
        """Greedy continuation of prompts [B, T] (placeholders expanded): a list of new id lists, cut at EOS."""
        with eval_mode(self), torch.inference_mode():
            return greedy(self.lm, ids, self.embed(ids, pixels), max_new_tokens, eos_token_id)


@torch.inference_mode()
def greedy(lm: Transformer, ids: torch.Tensor, vectors: torch.Tensor, max_new_tokens: int, eos_token_id: int):
    """Greedy decoding from prompt token vectors [B, T, d] (recomputed each step: a few tokens, no cache needed)."""
    with eval_mode(lm):
        new = ids.new_empty(ids.shape[0], 0)  # [B, 0]
        for _ in range(max_new_tokens):
            seen = torch.cat([vectors, lm.transformer.wte(new)], dim=1)  # [B, T + t, d]
            logits = lm(torch.cat([ids, new], dim=1), embeds=seen)  # [B, T + t, V]
            new = torch.cat([new, logits[:, -1].argmax(-1, keepdim=True)], dim=1)  # [B, t + 1]
    return [_cut_at(row.tolist(), eos_token_id) for row in new]


def _cut_at(ids: list[int], eos: int) -> list[int]:
    return ids[: ids.index(eos)] if eos in ids else ids


# ----- the generated pictures and captions -----------------------------------------------------


@dataclass(frozen=True)
class Scene:
    colour: str
    shape: str
    place: str

    def caption(self) -> list[str]:
        return ["the", self.colour, self.shape, self.place, "."]

    def attribute(self, name: str) -> str:
        return getattr(self, name)


def vlm_tokenizer():
    """The suite's word-level tokenizer, with the picture words and the ``<image>`` placeholder added."""
    tokenizer = build_tokenizer(data.vocabulary() + VISION_WORDS)
    tokenizer.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]})
    return tokenizer


def draw(scene: Scene, rng: np.random.Generator, size: int = 32) -> np.ndarray:
    """An RGB picture [size, size, 3] uint8 of ``scene``, with jitter in place, size, colour and noise."""
    image = rng.normal(30, 12, (size, size, 3))  # noisy dark background
    cx, cy = PLACES[scene.place]
    cx, cy = cx * size / 32 + rng.uniform(-2, 2), cy * size / 32 + rng.uniform(-2, 2)
    r = rng.uniform(*SHAPE_RADIUS) * size / 32
    y, x = np.mgrid[0:size, 0:size] + 0.5
    if scene.shape == "square":
        inside = (abs(x - cx) <= r) & (abs(y - cy) <= r)
    elif scene.shape == "circle":
        inside = (x - cx) ** 2 + (y - cy) ** 2 <= (1.15 * r) ** 2
    else:  # triangle, point up
        inside = (y >= cy - r) & (y <= cy + r) & (abs(x - cx) <= (y - (cy - r)) * 0.6 + 0.5)
    colour = np.array(COLOURS[scene.colour]) + rng.normal(0, 12, 3)
    image[inside] = colour + rng.normal(0, 8, (int(inside.sum()), 3))
    return np.clip(image, 0, 255).astype(np.uint8)


def scenes(n: int, seed: int) -> list[Scene]:
    """``n`` scenes drawn uniformly: every colour, shape and place equally likely."""
    rng = np.random.default_rng(seed)
    return [
        Scene(
            list(COLOURS)[rng.integers(len(COLOURS))],
            SHAPES[rng.integers(len(SHAPES))],
            list(PLACES)[rng.integers(len(PLACES))],
        )
        for _ in range(n)
    ]


def pictures(items: list[Scene], seed: int, size: int = 32) -> np.ndarray:
    """[n, size, size, 3] uint8 pictures of the scenes."""
    rng = np.random.default_rng(seed + 1_000_003)
    return np.stack([draw(s, rng, size) for s in items])


def to_pixels(images: np.ndarray) -> torch.Tensor:
    """uint8 [n, H, W, 3] -> float [n, 3, H, W] in [-1, 1]: what CLIP's image processor does at 32 px."""
    x = torch.from_numpy(np.ascontiguousarray(images)).float().permute(0, 3, 1, 2)  # [n, 3, H, W]
    return (x / 255.0 - IMAGE_MEAN) / IMAGE_STD


def prompt_ids(tokenizer, n_images: int, tokens_per_image: int) -> list[int]:
    """``<image>`` x n, then the prompt words, placeholders expanded."""
    image_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    ids = [image_id] * n_images + tokenizer.convert_tokens_to_ids(PROMPT)
    return expand_placeholders(ids, image_id, tokens_per_image)


@dataclass(frozen=True)
class Dataset:
    """Pictures with their captions as training rows: ids [n, T], targets [n, T] (-100 where nothing is scored)."""

    scenes: list[Scene]
    pixels: torch.Tensor  # [n, 3, H, W]
    ids: torch.Tensor  # [n, T]
    targets: torch.Tensor  # [n, T]


def make_dataset(n: int, seed: int, tokenizer, vision: VisionConfig, with_images: bool = True) -> Dataset:
    """``n`` scenes: ``<image>`` placeholders + caption + EOS; only the words after "the" are scored.

    with_images=False: the same captions with no image (the text-only baseline)."""
    items = scenes(n, seed)
    n_tokens = vision.image_tokens if with_images else 0
    head = prompt_ids(tokenizer, 1, n_tokens) if with_images else tokenizer.convert_tokens_to_ids(PROMPT)
    eos = [tokenizer.eos_token_id]
    rows = [head + tokenizer.convert_tokens_to_ids(s.caption()[len(PROMPT) :]) + eos for s in items]
    ids = torch.tensor(rows)  # [n, T]
    targets = torch.full_like(ids, -100)
    targets[:, len(head) - 1 : -1] = ids[:, len(head) :]  # predict each caption word from what comes before it
    return Dataset(items, to_pixels(pictures(items, seed, vision.image_size)), ids, targets)


# ----- training and accuracy --------------------------------------------------------------------


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
