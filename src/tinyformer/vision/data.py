"""The vision side's data (lesson 10), as :mod:`tinyformer.data` is the text side's: generated pictures of one
shape of one colour in one place, drawn with jitter and noise; their captions' words added to the suite's
tokenizer; training rows of placeholders + caption.

Boundary: numpy pictures, pixels as tensors, token ids of prompts and captions. No model here
(:mod:`tinyformer.vision.model`); training and accuracy are :mod:`tinyformer.vision.train`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from tinyformer.data import vocabulary
from tinyformer.tokenizer import build_tokenizer
from tinyformer.vision.model import VisionConfig
from tinyformer.vision.tokens import IMAGE_TOKEN, expand_placeholders

IMAGE_MEAN = IMAGE_STD = 0.5  # pixels / 255 -> (x - 0.5) / 0.5, in [-1, 1]

# The pictures: one shape of one colour in one place, on a noisy dark background.
COLOURS = {"red": (220, 50, 40), "green": (40, 190, 60), "blue": (50, 90, 235)}
SHAPES = ("square", "circle", "triangle")
PLACES = {"left": (9, 16), "right": (23, 16), "top": (16, 9), "bottom": (16, 23)}  # shape centre (x, y) in pixels
SHAPE_RADIUS = (5.5, 7.0)  # half-width of a shape in pixels at 32 px: about 1.5 patches
ATTRIBUTES = ("colour", "shape", "place")
VISION_WORDS = [*COLOURS, *SHAPES, *PLACES]
PROMPT = ["the"]  # the caption's first word: the model says the rest, "red circle left ."


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
    tokenizer = build_tokenizer(vocabulary() + VISION_WORDS)
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
