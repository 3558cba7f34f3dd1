"""Vision-language models in the memory budget: image tokens, the vision encoder's weights, and the memory
vLLM's start-up profiling run takes with maximal dummy images.

Pure functions of sizes copied from each model's public config (``reference/vlm_models.json``); the planner
(:func:`tinyformer.memory.planner.plan_serving`) calls :func:`profile_images` and
:func:`vision_activation_bytes` when a :class:`~tinyformer.memory.catalogue.ModelSpec` carries a
:class:`VisionSpec`; :mod:`tinyformer.memory.vision_logs` replays public start-up logs through it. Nothing here
runs a model.

Image tokens per image, each model's own rule (what its processor and vLLM's placeholder expansion do):

* ``fixed`` (LLaVA-1.5): one 336 px crop, (336 / 14)^2 = 576 patch tokens (the CLS token is dropped);
* ``crops`` (Phi-3.5-vision): the image is resized to a grid of 336 px crops (at most ``num_crops``) plus
  one global crop; each crop's 24 x 24 patches are merged 2 x 2 into 144 tokens, with one separator token
  after every row of 12 and one between the crops and the global view;
* ``dynamic`` (Qwen2-VL): the image is resized to multiples of 28 px within [min_pixels, max_pixels]; every
  14 px patch is a vision-encoder token and 2 x 2 patches merge into one LM token;
* ``tiles`` (Llama-3.2-Vision): up to 4 tiles of 560 px, each (560 / 14)^2 + 1 = 1601 tokens. They go into
  the cross-attention layers' states, not into the text sequence (one ``<|image|>`` token there).

vLLM sizes the KV cache after a profiling forward pass with the largest images a request may carry:
decoder-only models get ``min(max_num_seqs, max_num_batched_tokens // image_tokens)`` dummy requests with
one maximal image each (``limit_mm_per_prompt`` images with newer versions), while vLLM's V0
encoder-decoder runner (the one that served Llama-3.2-Vision) gives every one of ``max_num_seqs`` dummy
requests a maximal image, so its vision encoder sees 256 x 4 tiles at the defaults, whatever
``max_model_len`` is.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

SCHEMES = ("fixed", "crops", "dynamic", "tiles")


@dataclass(frozen=True)
class VisionSpec:
    """A vision encoder and the rule that turns an image into tokens (names follow the HF configs)."""

    scheme: str  # one of SCHEMES
    n_params: int  # vision encoder + projector (+ separator embeddings)
    image_size: int  # the encoder's input side in pixels (a crop or tile)
    patch_size: int
    hidden_size: int  # encoder width
    intermediate_size: int  # encoder MLP width
    n_layer: int
    n_head: int
    num_crops: int = 0  # crops: the most sub-crops of one image
    merge_size: int = 1  # crops, dynamic: patches merged per side into one LM token
    min_pixels: int = 0  # dynamic
    max_pixels: int = 0  # dynamic
    max_tiles: int = 0  # tiles
    output_dim: int = 0  # tiles: the encoder output width the projector reads (several layers concatenated)
    profile_image: tuple[int, int] = (0, 0)  # (width, height) of vLLM's dummy image
    notes: str = ""

    def __post_init__(self):
        if self.scheme not in SCHEMES:
            raise ValueError(f"unknown image-token scheme {self.scheme!r}; choose one of {SCHEMES}.")

    @property
    def patches_per_side(self) -> int:
        return self.image_size // self.patch_size

    @property
    def cross_attention(self) -> bool:
        """Images enter through cross-attention layers (Llama-3.2-Vision), not as text positions."""
        return self.scheme == "tiles"


def _positive_size(width: int, height: int) -> None:
    for name, value in (("width", width), ("height", height)):
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ValueError(f"image {name} must be a positive integer (pixels), got {value!r}.")


# --------------------------------------------------------------------------------------------------
# Image tokens, one function per scheme
# --------------------------------------------------------------------------------------------------


def crop_grid(width: int, height: int, num_crops: int, crop: int = 336) -> tuple[int, int]:
    """(columns, rows) of ``crop`` px crops Phi-3.5-vision's processor cuts an image into.

    The longer side is scaled to ``s`` crops, the largest s with s x ceil(s / aspect) <= num_crops; the
    other side follows the aspect ratio and is padded up to whole crops.
    """
    _positive_size(width, height)
    long, short = max(width, height), min(width, height)
    ratio = long / short
    scale = 1
    while scale * math.ceil(scale / ratio) <= num_crops:
        scale += 1
    scale -= 1
    long_px = scale * crop
    short_px = math.ceil(int(long_px / ratio) / crop) * crop  # padded up to whole crops
    long_crops, short_crops = scale, max(1, short_px // crop)
    return (long_crops, short_crops) if width >= height else (short_crops, long_crops)


def crops_image_tokens(width: int, height: int, num_crops: int, tokens_per_side: int = 12) -> int:
    """Phi-3.5-vision: (rows x cols + 1 global) crops x 144 tokens + 1 separator + a newline per token row."""
    cols, rows = crop_grid(width, height, num_crops)
    return (rows * cols + 1) * tokens_per_side**2 + 1 + (rows + 1) * tokens_per_side


def smart_resize(width: int, height: int, min_pixels: int, max_pixels: int, factor: int = 28) -> tuple[int, int]:
    """Qwen2-VL's resize: each side to a multiple of ``factor`` px, the area kept within [min, max] pixels."""
    _positive_size(width, height)
    w, h = max(factor, round(width / factor) * factor), max(factor, round(height / factor) * factor)
    if w * h > max_pixels:
        beta = math.sqrt(width * height / max_pixels)
        w, h = math.floor(width / beta / factor) * factor, math.floor(height / beta / factor) * factor
    elif w * h < min_pixels:
        beta = math.sqrt(min_pixels / (width * height))
        w, h = math.ceil(width * beta / factor) * factor, math.ceil(height * beta / factor) * factor
    return w, h


def dynamic_image_tokens(width: int, height: int, vision: VisionSpec) -> int:
    """Qwen2-VL: (H / 14) x (W / 14) patches after the resize, merged 2 x 2: H x W / 28^2 LM tokens."""
    w, h = smart_resize(width, height, vision.min_pixels, vision.max_pixels, vision.patch_size * vision.merge_size)
    return (w // vision.patch_size) * (h // vision.patch_size) // vision.merge_size**2


def tiles_for(width: int, height: int, max_tiles: int, tile: int = 560) -> int:
    """Llama-3.2-Vision: the tile grid (at most ``max_tiles`` tiles) that covers the image best."""
    _positive_size(width, height)
    grids = [(c, r) for c in range(1, max_tiles + 1) for r in range(1, max_tiles + 1) if c * r <= max_tiles]
    # the grid that needs the least down-scaling, then the fewest tiles (the processor's rule, simplified)
    best = max(grids, key=lambda g: (min(g[0] * tile / width, g[1] * tile / height, 1.0), -g[0] * g[1]))
    return best[0] * best[1]


def image_tokens(vision: VisionSpec, width: int | None = None, height: int | None = None) -> int:
    """Tokens one image becomes; without a size, the largest (vLLM's profiling image).

    For ``tiles`` this is the cross-attention length (1601 per tile), not text positions.
    """
    if width is None or height is None:
        width, height = vision.profile_image
    if vision.scheme == "fixed":
        return vision.patches_per_side**2
    if vision.scheme == "crops":
        return crops_image_tokens(width, height, vision.num_crops, vision.patches_per_side // vision.merge_size)
    if vision.scheme == "dynamic":
        return dynamic_image_tokens(width, height, vision)
    return tiles_for(width, height, vision.max_tiles, vision.image_size) * (vision.patches_per_side**2 + 1)


def text_positions_per_image(vision: VisionSpec, width: int | None = None, height: int | None = None) -> int:
    """Positions one image takes in the text sequence (and in max_model_len): its tokens, or 1 for tiles."""
    return 1 if vision.cross_attention else image_tokens(vision, width, height)


# --------------------------------------------------------------------------------------------------
# vLLM's profiling run with maximal images
# --------------------------------------------------------------------------------------------------


def encoder_tokens(vision: VisionSpec) -> int:
    """Tokens the vision encoder itself processes for one maximal image (before merging or dropping CLS)."""
    per_crop = vision.patches_per_side**2 + 1  # patches + CLS
    if vision.scheme == "fixed":
        return per_crop
    if vision.scheme == "crops":
        cols, rows = crop_grid(*vision.profile_image, vision.num_crops)
        return (rows * cols + 1) * per_crop
    if vision.scheme == "dynamic":
        return image_tokens(vision) * vision.merge_size**2
    tiles = tiles_for(*vision.profile_image, vision.max_tiles, vision.image_size)
    return tiles * (-(-per_crop // 8) * 8)  # each tile padded to a multiple of 8 tokens


def vision_activation_bytes(vision: VisionSpec, lm_hidden_size: int, lm_kv_width: int, dtype_bytes: float = 2) -> int:
    """Bytes one maximal image adds to the profiling peak.

    The encoder's MLP stage, counted like the language model's (``serving_activation_bytes``): an
    [L, intermediate] tensor and four [L, hidden] ones for the encoder's L tokens; then the image's
    embeddings at the language model's width, kept until the language model has run. Llama-3.2-Vision's
    encoder attends over all 4 tiles at once with an additive [L, L] mask (L = 6432), built once and copied
    once; its output concatenates several layers (7680 wide) before the projector; and each cross-attention
    layer computes the image's K and V (``lm_kv_width`` = KV heads x head_dim each). Attention scores are
    not counted: vLLM's encoders use fused (memory-efficient) attention.
    """
    length, tokens = encoder_tokens(vision), image_tokens(vision)
    mlp = length * (vision.intermediate_size + 4 * vision.hidden_size)
    kept = tokens * lm_hidden_size
    cross = 2 * length**2 + tokens * (vision.output_dim + 2 * lm_kv_width) if vision.cross_attention else 0
    return math.ceil((mlp + kept + cross) * dtype_bytes)


def profile_images(
    vision: VisionSpec, max_num_batched_tokens: int, max_num_seqs: int, limit_mm_per_prompt: int = 1
) -> int:
    """How many maximal images vLLM's profiling run puts through the vision encoder at once.

    Decoder-only models: ``min(max_num_seqs, max_num_batched_tokens // (images x tokens))`` dummy requests
    (at least 1), each with ``limit_mm_per_prompt`` maximal images. Encoder-decoder (cross-attention)
    models: all ``max_num_seqs`` dummy requests carry them, whatever the token budget.
    """
    per_request = limit_mm_per_prompt * image_tokens(vision)
    if vision.cross_attention:
        requests = max_num_seqs
    else:
        requests = max(1, min(max_num_seqs, max_num_batched_tokens // per_request))
    return requests * limit_mm_per_prompt


def images_per_request(vision: VisionSpec, max_model_len: int, text_tokens: int = 0) -> int | None:
    """Maximal images one request can carry within max_model_len (None: images are not text positions)."""
    if vision.cross_attention:
        return None
    return max(0, max_model_len - text_tokens) // text_positions_per_image(vision)


def images_in_kv_cache(vision: VisionSpec, kv_tokens: int) -> int:
    """Maximal images whose tokens the KV cache holds at once (cross-attention tokens for tiles)."""
    return max(0, kv_tokens) // image_tokens(vision)
