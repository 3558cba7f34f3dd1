"""The tiny vision-language model written out by hand (lesson 10): patches, the vision tower, the projector and
the language model glued by placeholder tokens.

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
= "default"``), so :mod:`tinyformer.export.llava` is a renaming of weights, verified logit for logit.

Boundary: modules and the forward pass (and greedy decoding from image vectors). Token counts are
:mod:`tinyformer.vision.tokens`, the pictures and captions :mod:`tinyformer.vision.data`, training and
the checkpoint :mod:`tinyformer.vision.train`; writing the Hugging Face folder is :mod:`tinyformer.export.llava`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn as nn

from tinyformer.config import ModelConfig
from tinyformer.model import Block, Transformer, eval_mode
from tinyformer.vision.tokens import IMAGE_TOKEN, image_tokens, patches_per_image


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
                "turn pictures into pixels with tinyformer.vision.data.to_pixels."
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
