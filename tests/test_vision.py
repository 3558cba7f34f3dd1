"""Lesson 10's pure parts: token counts, placeholder expansion, the hand-written ViT, the LLaVA export."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from tinyformer import checks, vision
from tinyformer.export.folder import EXPORT_FILES
from tinyformer.export.llava import export_llava, verify_llava_export
from tinyformer.vision import data as vision_data
from tinyformer.vision import train as vision_train


@pytest.fixture(scope="module")
def tokenizer():
    return vision.vlm_tokenizer()


@pytest.fixture(scope="module")
def vlm(tokenizer):
    model = vision.build_vlm(tokenizer, seed=0)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():  # move every weight off its init (zero biases, unit norms) so the export is tested fully
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=generator))
    return model.eval()


def test_image_token_counts():
    assert vision.image_tokens(32, 8) == 16
    assert vision.image_tokens(32, 8, drop_cls=False) == 17
    assert vision.image_tokens(336, 14) == 576  # LLaVA-1.5
    assert vision.image_tokens(336, 14, pixel_shuffle=2, crops=5) == 5 * 144
    with pytest.raises(ValueError, match="multiple of patch_size"):
        vision.image_tokens(30, 8)
    with pytest.raises(ValueError, match="pixel_shuffle"):
        vision.image_tokens(32, 8, pixel_shuffle=3)


def test_expand_placeholders():
    assert vision.expand_placeholders([9, 3, 9], 9, 2) == [9, 9, 3, 9, 9]
    assert vision.expand_placeholders([1, 2], 9, 16) == [1, 2]
    with pytest.raises(ValueError):
        vision.expand_placeholders([9], 9, 0)


def test_image_kv_bytes_is_the_token_formula():
    assert vision.image_kv_bytes(2, 16, 2, 2, 32, 4) == 32 * 2 * 2 * 2 * 32 * 4


def test_patchify_matches_a_strided_convolution(vlm):
    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    weight = vlm.vision.patch_embedding.weight  # [d, 3·p·p]
    conv = torch.nn.functional.conv2d(pixels, weight.view(-1, 3, 8, 8), stride=8)  # [2, d, 4, 4]
    ours = vision.patchify(pixels, 8) @ weight.T  # [2, 16, d]
    torch.testing.assert_close(ours, conv.flatten(2).transpose(1, 2), atol=1e-5, rtol=1e-5)


def test_vision_tower_is_bidirectional_and_the_lm_causal(vlm):
    pixels = vision.to_pixels(vision.pictures(vision.scenes(1, 0), 0))
    changed = pixels.clone()
    changed[..., 24:, 24:] = 1.0  # only the last patch changes
    before, after = vlm.vision(pixels), vlm.vision(changed)
    assert (after[0, 1] - before[0, 1]).abs().max() > 1e-4  # the FIRST patch's output moved
    ids = torch.tensor([[3, 5, 7, 9]])
    later = torch.tensor([[3, 5, 7, 11]])
    torch.testing.assert_close(vlm.lm(ids)[:, :3], vlm.lm(later)[:, :3], atol=0, rtol=0)


def test_placeholders_must_match_images(vlm, tokenizer):
    ids = torch.tensor([vision.prompt_ids(tokenizer, 1, 16)])
    with pytest.raises(ValueError, match="placeholders"):
        vlm(ids, None)
    pixels = vision.to_pixels(vision.pictures(vision.scenes(1, 0), 0))
    assert vlm(ids, pixels).shape == (1, 17, len(tokenizer))


def test_dataset_scores_only_the_caption(tokenizer):
    data = vision.make_dataset(4, 0, tokenizer, vision.VisionConfig())
    assert data.ids.shape == (4, 16 + 1 + 4 + 1)  # image, "the", colour shape place ".", EOS
    scored = (data.targets[0] != -100).nonzero().flatten().tolist()
    assert scored == [16, 17, 18, 19, 20]
    assert vision.chance()["colour"] == pytest.approx(1 / 3)


def test_export_reproduces_the_model_in_transformers(vlm, tokenizer, tmp_path):
    folder = export_llava(vlm, tokenizer, tmp_path / "vlm")
    assert verify_llava_export(vlm, tokenizer, folder) < 1e-4
    assert {p.name for p in folder.iterdir()} <= EXPORT_FILES  # what --overwrite may replace
    from tinyformer.serving import model_config_from_dir

    assert model_config_from_dir(folder) == vlm.lm.config


def test_the_package_gives_the_published_numbers():
    """The checkers' expected answers come from these functions, so they are pinned here to numbers from
    outside: CLIP ViT-L/14 at 336 px gives LLaVA-1.5 its 576 image tokens (577 with CLS); Llama-2-7B's KV cache
    is 512 KiB per fp16 token (32 layers x 32 heads x 128 x 2 x 2 B)."""
    assert vision.image_tokens(336, 14) == 576 and vision.image_tokens(336, 14, drop_cls=False) == 577
    assert vision.expand_placeholders([1, 9, 2, 9], 9, 3) == [1, 9, 9, 9, 2, 9, 9, 9]
    assert vision.image_kv_bytes(2, 576, 32, 32, 128, 2) == 2 * 576 * 512 * 1024


def test_checkers_accept_a_learners_own_answer_and_reject_mistakes():
    """Answers written from the formulas, not the package's functions (which the checkers' expectations use)."""

    def tokens(size, patch, drop):
        return (size // patch) ** 2 + (0 if drop else 1)

    def expand(ids, image, n):
        return [j for i in ids for j in ([i] * n if i == image else [i])]

    def kv_bytes(n, t, layers, heads, head_dim, nbytes):
        return 2 * n * t * layers * heads * head_dim * nbytes

    assert checks.check_image_token_count(tokens, quiet=True)
    assert not checks.check_image_token_count(lambda s, p, drop: (s // p) ** 2 + 1, quiet=True)
    assert checks.check_expand_placeholders(expand, quiet=True)
    assert not checks.check_expand_placeholders(lambda ids, i, n: ids + [i] * (n - 1), quiet=True)
    assert checks.check_image_kv_bytes(kv_bytes, quiet=True)
    assert not checks.check_image_kv_bytes(lambda n, t, layers, h, hd, b: t * layers * h * hd * b, quiet=True)


# ----- the trained pair, cached under artifacts/ ------------------------------------------------------------------

TINY = vision.VLMTrainConfig(steps=2, batch_size=4, n_train=8, n_test=4)  # seconds, not a useful model


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_load_or_train_vlm_trains_once_then_loads(tmp_path, monkeypatch):
    path = tmp_path / "vlm.pt"
    first = vision.load_or_train_vlm(TINY, path=path, progress=False)
    assert not first.loaded and path.is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".vlm.pt.lock", "vlm.pt"]  # no temp file left behind
    monkeypatch.setattr(vision_train, "train_pair", lambda *a, **k: pytest.fail("load_or_train_vlm trained again"))
    again = vision.load_or_train_vlm(TINY, path=path, progress=False)
    assert again.loaded and not again.model.training and not again.baseline.training
    assert same_weights(again.model, first.model) and same_weights(again.baseline, first.baseline)
    assert (again.accuracy, again.baseline_accuracy) == (first.accuracy, first.baseline_accuracy)  # measured again
    more_tests = vision.load_or_train_vlm(dataclasses.replace(TINY, n_test=6), path=path, progress=False)
    assert more_tests.loaded  # how many pictures are scored is not part of the recipe


@pytest.mark.parametrize(
    "change",
    [
        lambda mp: dataclasses.replace(TINY, steps=3),  # another training setting
        lambda mp: mp.setattr(vision_data, "SHAPE_RADIUS", (5.0, 7.0)) or TINY,  # other pictures, same settings
        lambda mp: mp.setattr(vision_data, "VISION_WORDS", [*vision.VISION_WORDS, "purple"]) or TINY,  # a new word
    ],
    ids=["steps", "pictures", "vocabulary"],
)
def test_load_or_train_vlm_trains_again_for_another_recipe(tmp_path, monkeypatch, change):
    path = tmp_path / "vlm.pt"
    vision.load_or_train_vlm(TINY, path=path, progress=False)
    calls = []
    real = vision.train_pair
    monkeypatch.setattr(vision_train, "train_pair", lambda *a, **k: calls.append(a) or real(*a, **k))
    cfg = change(monkeypatch)
    retrained = vision.load_or_train_vlm(cfg, path=path, progress=False)
    assert len(calls) == 1 and not retrained.loaded
    assert vision.load_vlm(path)[2] == vision.vlm_recipe(cfg, vision.vlm_tokenizer())  # the file holds the new one


def test_load_vlm_rejects_damaged_and_foreign_files(tmp_path):
    path = tmp_path / "vlm.pt"
    vision.load_or_train_vlm(TINY, path=path, progress=False)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated or corrupted"):
        vision.load_or_train_vlm(TINY, path=path, progress=False)
    torch.save({"format": "tinyformer-checkpoint-v1"}, path)  # lesson 04's kind of file under this name
    with pytest.raises(ValueError, match="expected format 'tinyformer-vlm-v1'"):
        vision.load_vlm(path)
    vision.load_or_train_vlm(TINY, path=path.with_name("good.pt"), progress=False)
    payload = torch.load(path.with_name("good.pt"), weights_only=True)
    payload["config"]["text"]["n_embd"] = 32  # config says one width, weights another
    torch.save(payload, path)
    with pytest.raises(ValueError, match="does not match its own config"):
        vision.load_vlm(path)
