"""Counting image tokens (lesson 10): patches per image, tokens per image under each model's rule, the
``<image>`` placeholder expanded to one slot per image vector, and the KV bytes those tokens take.

Boundary: arithmetic on sizes and token ids only, no tensors and no model. The model is
:mod:`tinyformer.vision.model`; the real models' rules (crops, tiles, vLLM's profiling) are
:mod:`tinyformer.memory.vision`.
"""

from __future__ import annotations

from tinyformer import memory

IMAGE_TOKEN = "<image>"


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
