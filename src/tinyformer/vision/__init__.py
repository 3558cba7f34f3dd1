"""Images are tokens: a tiny vision-language model written out by hand (lesson 10), shaped like the text side.

tokens.py    image tokens: patches per image, each model's rule, ``<image>`` placeholders expanded, their KV bytes
model.py     VisionConfig, patchify, the vision tower (a ViT of model.Block, no causal mask), the projector and
             VisionLanguageModel (placeholders' rows replaced by image vectors), greedy decoding
data.py      the generated pictures and captions (the text side's data.py), the tokenizer with their words,
             training rows (Dataset)
train.py     training the VLM and the text-only baseline, accuracy against chance, the checkpoint under artifacts/

Writing the Hugging Face LLaVA folder is :mod:`tinyformer.export.llava`; the memory of real VLMs (crops, tiles,
vLLM's profiling run) is :mod:`tinyformer.memory.vision`. ``from tinyformer import vision`` then
``vision.NAME`` reaches every name below; each is defined in the module named beside it.
"""

from tinyformer.vision.data import (
    ATTRIBUTES,
    COLOURS,
    IMAGE_MEAN,
    IMAGE_STD,
    PLACES,
    PROMPT,
    SHAPE_RADIUS,
    SHAPES,
    VISION_WORDS,
    Dataset,
    Scene,
    draw,
    make_dataset,
    pictures,
    prompt_ids,
    scenes,
    to_pixels,
    vlm_tokenizer,
)
from tinyformer.vision.model import (
    VisionConfig,
    VisionLanguageModel,
    VisionTower,
    greedy,
    patchify,
)
from tinyformer.vision.tokens import IMAGE_TOKEN, expand_placeholders, image_kv_bytes, image_tokens, patches_per_image
from tinyformer.vision.train import (
    VLM_FORMAT,
    TrainedVLM,
    VLMTrainConfig,
    accuracy,
    build_vlm,
    caption_words,
    chance,
    config_dict,
    load_or_train_vlm,
    load_vlm,
    save_vlm,
    score_pair,
    train_and_score,
    train_pair,
    train_vlm,
    vlm_recipe,
)

__all__ = [
    "ATTRIBUTES",
    "COLOURS",
    "IMAGE_MEAN",
    "IMAGE_STD",
    "IMAGE_TOKEN",
    "PLACES",
    "PROMPT",
    "SHAPES",
    "SHAPE_RADIUS",
    "VISION_WORDS",
    "VLM_FORMAT",
    "Dataset",
    "Scene",
    "TrainedVLM",
    "VLMTrainConfig",
    "VisionConfig",
    "VisionLanguageModel",
    "VisionTower",
    "accuracy",
    "build_vlm",
    "caption_words",
    "chance",
    "config_dict",
    "draw",
    "expand_placeholders",
    "greedy",
    "image_kv_bytes",
    "image_tokens",
    "load_or_train_vlm",
    "load_vlm",
    "make_dataset",
    "patches_per_image",
    "patchify",
    "pictures",
    "prompt_ids",
    "save_vlm",
    "scenes",
    "score_pair",
    "to_pixels",
    "train_and_score",
    "train_pair",
    "train_vlm",
    "vlm_recipe",
    "vlm_tokenizer",
]
