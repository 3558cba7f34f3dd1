"""The LLaVA format: a tinyformer VisionLanguageModel (lesson 10) as a Hugging Face folder that transformers and
vLLM load.

The folder is ``LlavaForConditionalGeneration`` with a CLIP vision tower and an OPT language model:

* vision tower (CLIP): the patch matrix [d, 3·p·p] becomes the patch convolution's kernel [d, 3, p, p]
  (a p x p convolution with stride p IS one matrix per patch); CLS, the position table, ``pre_layrnorm``
  and each Block (``c_attn`` split into q/k/v, ``c_proj`` -> ``out_proj``, ln_1/ln_2 -> layer_norm1/2,
  the MLP -> fc1/fc2) keep their values. CLIP's ``post_layernorm`` is written as the identity: LLaVA reads
  the last layer's output before it.
* projector: ``linear_1``, GELU, ``linear_2``, as is.
* language model (OPT): GPT-2's layout with separate q/k/v projections and a position table read at
  position + 2 (OPT keeps two unused rows in front), so two zero rows are prepended to ``wpe``. OPT
  scales q by 1/sqrt(head_dim) before q·k, the same maths as lesson 02. LLaVA cannot tie an OPT head to
  its token table, so ``lm_head`` is written as a copy of ``wte``.

vLLM serves it with ``--model-impl transformers`` (its own LLaVA code imports torchvision, which the CPU
install cannot load). As with :func:`tinyformer.export.export_hf`, the folder is written to a temp folder
(:func:`tinyformer.export.folder.atomic_folder`), loaded back with transformers (model AND processor) and
compared with the tinyformer model (:func:`tinyformer.export.verify.check_logits_match`) before it is renamed
into place.

Boundary: LLaVA's config, weight names, processor and its verification. The model is :mod:`tinyformer.vision`.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from transformers import (
    AutoProcessor,
    CLIPVisionConfig,
    GenerationConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    OPTConfig,
)
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

from tinyformer.config import hf_sizes
from tinyformer.export.folder import atomic_folder, special_token_ids
from tinyformer.export.verify import (
    VERIFY_ATOL,
    ExportVerificationError,
    check_logits_match,
    no_transformers_progress_bars,
)
from tinyformer.model import eval_mode
from tinyformer.vision.data import IMAGE_MEAN, IMAGE_STD, PROMPT, pictures, prompt_ids, scenes, to_pixels
from tinyformer.vision.model import VisionLanguageModel
from tinyformer.vision.tokens import IMAGE_TOKEN

# A chat is its messages' parts in order: text as is, each image as one <image> placeholder that vLLM's
# processor expands to the image's tokens. (vLLM's Transformers backend needs the template itself to place
# the placeholders: it passes image parts to the template rather than inserting them into the text.)
CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['content'] is string %}{{ message['content'] | trim }} "
    "{% else %}{% for part in message['content'] %}{% if part['type'] == 'text' %}{{ part['text'] | trim }} "
    "{% else %}" + IMAGE_TOKEN + " {% endif %}{% endfor %}{% endif %}{% endfor %}"
)
OPT_POSITION_OFFSET = 2  # OPT reads its position table at position + 2


def vllm_args(max_images_per_prompt: int = 1) -> list[str]:
    """The extra vLLM arguments this export needs: the Transformers modeling backend, and the image limit."""
    return ["--model-impl", "transformers", "--limit-mm-per-prompt", json.dumps({"image": max_images_per_prompt})]


def llava_config(model: VisionLanguageModel, tokenizer) -> LlavaConfig:
    """LlavaConfig (CLIP vision tower + OPT language model) describing the same computation as ``model``."""
    vision, text = model.vision.config, model.lm.config
    ids = special_token_ids(tokenizer, text.vocab_size)
    clip = CLIPVisionConfig(
        image_size=vision.image_size,
        patch_size=vision.patch_size,
        **hf_sizes(vision, "n_embd", "mlp_hidden", "n_layer", "n_head"),
        hidden_act="gelu_new",  # tanh GELU, as in model.MLP
        layer_norm_eps=vision.layer_norm_epsilon,
        projection_dim=vision.n_embd,
    )
    opt = OPTConfig(
        **hf_sizes(text, "vocab_size", "n_embd", "n_layer", "n_head", "n_positions"),
        word_embed_proj_dim=text.n_embd,
        ffn_dim=text.mlp_hidden,  # OPT's name for intermediate_size
        do_layer_norm_before=True,  # pre-LN, as in model.Block
        activation_function="gelu_new",
        enable_bias=True,
        dropout=0.0,
        tie_word_embeddings=False,
        **ids,
    )
    if text.layer_norm_epsilon != 1e-5:
        raise ValueError(f"OPT's layer norms use eps=1e-5; this model uses {text.layer_norm_epsilon}.")
    config = LlavaConfig(
        vision_config=clip,
        text_config=opt,
        image_token_index=model.image_token_id,
        image_seq_length=model.tokens_per_image,
        vision_feature_select_strategy="default",  # CLS dropped
        vision_feature_layer=-1,  # the tower's last layer
        projector_hidden_act="gelu",
        multimodal_projector_bias=True,
        tie_word_embeddings=False,
    )
    config.architectures = ["LlavaForConditionalGeneration"]
    return config


def llava_state_dict(model: VisionLanguageModel) -> dict[str, torch.Tensor]:
    """LlavaForConditionalGeneration's weights (its in-memory names) for ``model``."""
    vision, text = model.vision, model.lm
    d = vision.config.n_embd
    p = vision.config.patch_size
    out = {
        "model.vision_tower.embeddings.patch_embedding.weight": vision.patch_embedding.weight.view(d, 3, p, p),
        "model.vision_tower.embeddings.class_embedding": vision.class_embedding,
        "model.vision_tower.embeddings.position_embedding.weight": vision.position_embedding.weight,
        "model.vision_tower.pre_layrnorm.weight": vision.pre_layrnorm.weight,
        "model.vision_tower.pre_layrnorm.bias": vision.pre_layrnorm.bias,
        "model.vision_tower.post_layernorm.weight": torch.ones(d),  # unused by LLaVA: the identity
        "model.vision_tower.post_layernorm.bias": torch.zeros(d),
    }
    names = dict(ln_1="layer_norm1", ln_2="layer_norm2", c_proj="out_proj", fc1="mlp.fc1", fc2="mlp.fc2")
    for i, block in enumerate(vision.h):
        out.update(_block_weights(block, f"model.vision_tower.encoder.layers.{i}", "self_attn", names))
    out.update({f"model.multi_modal_projector.linear_1.{k}": v for k, v in model.projector[0].state_dict().items()})
    out.update({f"model.multi_modal_projector.linear_2.{k}": v for k, v in model.projector[2].state_dict().items()})

    lm = "model.language_model.decoder"
    wte, wpe = text.transformer.wte.weight, text.transformer.wpe.weight
    out[f"{lm}.embed_tokens.weight"] = wte
    out[f"{lm}.embed_positions.weight"] = torch.cat([wpe.new_zeros(OPT_POSITION_OFFSET, wpe.shape[1]), wpe])
    out[f"{lm}.final_layer_norm.weight"] = text.transformer.ln_f.weight
    out[f"{lm}.final_layer_norm.bias"] = text.transformer.ln_f.bias
    out["lm_head.weight"] = wte  # a copy on disk: LLaVA cannot tie an OPT head
    names = dict(ln_1="self_attn_layer_norm", ln_2="final_layer_norm", c_proj="out_proj", fc1="fc1", fc2="fc2")
    for i, block in enumerate(text.transformer.h):
        out.update(_block_weights(block, f"{lm}.layers.{i}", "self_attn", names))
    return {k: v.detach().cpu().contiguous().clone() for k, v in out.items()}


def _block_weights(block, prefix: str, attn: str, names: dict[str, str]) -> dict[str, torch.Tensor]:
    """One model.Block under Hugging Face names: c_attn split into q/k/v (rows q, then k, then v)."""
    out = {}
    d = block.ln_1.weight.shape[0]
    for kind in ("weight", "bias"):
        q, k, v = getattr(block.attn.c_attn, kind).split(d, dim=0)  # [3d, ...] -> 3 x [d, ...]
        out.update({f"{prefix}.{attn}.{n}_proj.{kind}": t for n, t in zip("qkv", (q, k, v), strict=True)})
        out[f"{prefix}.{attn}.{names['c_proj']}.{kind}"] = getattr(block.attn.c_proj, kind)
        out[f"{prefix}.{names['ln_1']}.{kind}"] = getattr(block.ln_1, kind)
        out[f"{prefix}.{names['ln_2']}.{kind}"] = getattr(block.ln_2, kind)
        out[f"{prefix}.{names['fc1']}.{kind}"] = getattr(block.mlp.c_fc, kind)
        out[f"{prefix}.{names['fc2']}.{kind}"] = getattr(block.mlp.c_proj, kind)
    return out


def to_hf_llava(model: VisionLanguageModel, tokenizer) -> LlavaForConditionalGeneration:
    """An in-memory transformers LlavaForConditionalGeneration (eval mode) holding a copy of the weights."""
    with no_transformers_progress_bars():
        hf_model = LlavaForConditionalGeneration(llava_config(model, tokenizer))
    missing, unexpected = hf_model.load_state_dict(llava_state_dict(model), strict=False)
    if missing or unexpected:
        raise ValueError(f"weight names do not match LLaVA: missing {missing}, unexpected {unexpected}.")
    return hf_model.eval()


def llava_processor(model: VisionLanguageModel, tokenizer) -> LlavaProcessor:
    """Tokenizer + CLIP image processor (no resize at this size, /255, (x - 0.5) / 0.5) + placeholder rule."""
    size = model.vision.config.image_size
    images = CLIPImageProcessorPil(
        size={"shortest_edge": size},
        crop_size={"height": size, "width": size},
        image_mean=[IMAGE_MEAN] * 3,
        image_std=[IMAGE_STD] * 3,
    )
    tokenizer = copy.deepcopy(tokenizer)  # don't change the caller's tokenizer
    tokenizer.model_max_length = model.lm.config.n_positions
    tokenizer.chat_template = CHAT_TEMPLATE
    return LlavaProcessor(
        image_processor=images,
        tokenizer=tokenizer,
        patch_size=model.vision.config.patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,  # CLS, which "default" then drops again
        image_token=IMAGE_TOKEN,
        chat_template=CHAT_TEMPLATE,
    )


def export_llava(
    model: VisionLanguageModel, tokenizer, out_dir: str | Path, *, overwrite: bool = False, verify: bool = True
) -> Path:
    """Write ``model`` as a Hugging Face LLaVA folder at ``out_dir`` (atomically, verified); return its path."""
    model.lm.config.check_vllm_head_size()  # refuse now rather than crash vLLM on its first request
    with atomic_folder(out_dir, overwrite) as tmp:
        write_llava_folder(model, tokenizer, tmp)
        if verify:
            verify_llava_export(model, tokenizer, tmp)
    return Path(out_dir)


def write_llava_folder(model: VisionLanguageModel, tokenizer, folder: Path) -> None:
    """config.json, model.safetensors, generation_config.json, the processor and tokenizer files."""
    hf_model = to_hf_llava(model, tokenizer)
    with no_transformers_progress_bars():
        hf_model.save_pretrained(folder)
    text = hf_model.config.text_config
    GenerationConfig(
        bos_token_id=text.bos_token_id, eos_token_id=text.eos_token_id, pad_token_id=text.pad_token_id
    ).save_pretrained(folder)
    llava_processor(model, tokenizer).save_pretrained(folder)


def probe_pictures(model: VisionLanguageModel, n: int = 2) -> np.ndarray:
    """Seeded pictures [n, H, W, 3] uint8 for verifying an export."""
    return pictures(scenes(n, seed=4321), seed=4321, size=model.vision.config.image_size)


@torch.inference_mode()
def verify_llava_export(model: VisionLanguageModel, tokenizer, folder: Path, atol: float = VERIFY_ATOL) -> float:
    """Load ``folder`` with transformers; check its processor makes our ids and pixels and its model our logits."""
    with no_transformers_progress_bars():
        hf_model = LlavaForConditionalGeneration.from_pretrained(folder, local_files_only=True, dtype=torch.float32)
        processor = AutoProcessor.from_pretrained(folder, local_files_only=True)
    images = probe_pictures(model)
    text = " ".join([IMAGE_TOKEN] + PROMPT)
    batch = processor(
        images=[Image.fromarray(im) for im in images], text=[text] * len(images), return_tensors="pt"
    )  # one picture per row
    ids = torch.tensor([prompt_ids(tokenizer, 1, model.tokens_per_image)] * len(images))  # [n, T]
    if not torch.equal(batch["input_ids"], ids):
        raise ExportVerificationError(
            f"the exported processor turns {text!r} into {batch['input_ids'][0].tolist()}, "
            f"the lesson's placeholder expansion into {ids[0].tolist()}."
        )
    pixels = to_pixels(images)  # [n, 3, H, W]
    pixel_gap = (batch["pixel_values"] - pixels).abs().max().item()
    if not pixel_gap <= 1e-6:
        raise ExportVerificationError(f"the exported image processor's pixels differ from ours by {pixel_gap:.1e}.")
    with eval_mode(model):
        expected = model(ids, pixels).float()  # [n, T, V]
    got = hf_model.eval()(input_ids=ids, pixel_values=pixels).logits.float()  # [n, T, V]
    return check_logits_match(expected, got, atol, "LlavaForConditionalGeneration")
