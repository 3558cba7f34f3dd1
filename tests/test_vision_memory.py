"""Vision-language models in the budget calculator: image tokens from each model's own rule, the vision
encoder's weights, vLLM's profiling with maximal dummy images, and the public start-up logs it must match."""

from __future__ import annotations

import pytest

from tinyformer import memory
from tinyformer.memory import vision as vm
from tinyformer.memory import vision_logs

PHI = "microsoft/Phi-3.5-vision-instruct"
LLAVA = "llava-hf/llava-1.5-7b-hf"
QWEN = "Qwen/Qwen2-VL-7B-Instruct"
MLLAMA = "meta-llama/Llama-3.2-11B-Vision-Instruct"


def vision(hf_id: str) -> vm.VisionSpec:
    return memory.find_model(hf_id).vision


# ---- image tokens ----------------------------------------------------------------------------------


def test_llava_is_576_patch_tokens_whatever_the_image():
    assert vm.image_tokens(vision(LLAVA)) == (336 // 14) ** 2 == 576
    assert vm.image_tokens(vision(LLAVA), 1920, 1080) == 576


@pytest.mark.parametrize(
    ("width", "height", "num_crops", "grid", "tokens"),
    [
        (1344, 1008, 4, (2, 2), (2 * 2 + 1) * 144 + 1 + (2 + 1) * 12),  # 757
        (336, 336, 4, (2, 2), 757),  # a small image is scaled up to the largest grid num_crops allows
        (1000, 200, 4, (4, 1), (4 + 1) * 144 + 1 + (1 + 1) * 12),  # 745: a wide strip
        (50, 8000, 4, (1, 4), (4 + 1) * 144 + 1 + (4 + 1) * 12),  # 781: vLLM's profiling image
        (50, 8000, 16, (1, 16), 2653),  # the image_feature_size=2653 vLLM's Phi-3-vision example once hard-coded
        # vLLM's own processor test (tests/models/multimodal/processing/test_phi3v.py) expects 757 tokens per image
        # with num_crops=4 and 1,921 with 16 for its landscape stop-sign photo; a 4:3 landscape gives that pair.
        (1024, 768, 4, (2, 2), 757),
        (1024, 768, 16, (4, 3), (4 * 3 + 1) * 144 + 1 + (3 + 1) * 12),  # 1921
    ],
)
def test_phi35_vision_crops_plus_global_view_plus_separators(width, height, num_crops, grid, tokens):
    assert vm.crop_grid(width, height, num_crops) == grid
    assert vm.crops_image_tokens(width, height, num_crops) == tokens


def test_phi35_vision_profiles_with_its_largest_image():
    spec = vision(PHI)
    assert spec.num_crops == 4 and vm.image_tokens(spec) == 781
    assert vm.encoder_tokens(spec) == 5 * 577  # 4 crops + the global view, 576 patches + CLS each


@pytest.mark.parametrize(
    ("width", "height", "resized", "tokens"),
    [
        (224, 224, (224, 224), 64),  # 8 x 8 merged patches of 28 px
        (100, 100, (112, 112), 16),  # rounded to multiples of 28
        (20, 20, (56, 56), 4),  # below min_pixels (3136 = 56^2): scaled up
        (3584, 3584, (3584, 3584), 16384),  # max_pixels exactly: vLLM's profiling image
        (8000, 8000, (3584, 3584), 16384),  # above max_pixels: scaled down
    ],
)
def test_qwen2_vl_tokens_follow_the_resized_area(width, height, resized, tokens):
    spec = vision(QWEN)
    assert vm.smart_resize(width, height, spec.min_pixels, spec.max_pixels) == resized
    assert vm.image_tokens(spec, width, height) == tokens == resized[0] * resized[1] // 28**2


def test_llama_vision_tiles_go_to_cross_attention_not_to_text_positions():
    spec = vision(MLLAMA)
    assert vm.image_tokens(spec, 560, 560) == 1601 and vm.image_tokens(spec) == 4 * 1601 == 6404
    assert vm.text_positions_per_image(spec) == 1 and vm.images_per_request(spec, 1024) is None
    assert vm.images_per_request(vision(PHI), 4096, text_tokens=100) == (4096 - 100) // 781


def test_bad_image_sizes_and_schemes_raise_value_errors():
    with pytest.raises(ValueError, match="width must be a positive integer"):
        vm.image_tokens(vision(PHI), 0, 100)
    with pytest.raises(ValueError, match="unknown image-token scheme"):
        vm.VisionSpec("pixels", 1, 1, 1, 1, 1, 1, 1)


# ---- weights and lookups ---------------------------------------------------------------------------


@pytest.mark.parametrize("hf_id", [PHI, LLAVA, MLLAMA])
def test_text_plus_vision_parameters_equal_the_published_checkpoint(hf_id):
    spec = memory.find_model(hf_id)
    assert spec.text_params + spec.vision.n_params == spec.n_params == spec.n_params_published


def test_qwen2_vl_count_matches_the_rounded_figure_of_its_model_page():
    spec = memory.find_model(QWEN)
    assert spec.text_params == memory.real_models()["Qwen2.5-7B-Instruct"].n_params  # same language model
    assert spec.n_params == pytest.approx(8.29e9, rel=0.001)


def test_vision_weights_are_counted_and_stay_16_bit_when_quantised():
    spec = memory.find_model(PHI)
    plan = memory.plan_serving(PHI, "A10G 24 GB", max_model_len=8192)
    assert plan.weights == 2 * spec.n_params and spec.n_params > spec.text_params
    int4 = memory.model_weight_bytes(spec, "int4")
    text_only = memory.model_weight_bytes(memory.real_models()["Phi-3.5-mini"], "int4")
    assert int4 - text_only == 2 * spec.vision.n_params


def test_models_are_found_by_hugging_face_id_and_unknown_ids_list_the_known_ones():
    assert memory.find_model(LLAVA).name == "LLaVA-1.5-7B"
    assert memory.find_model(MLLAMA).vision is not None  # the VLM, not the text-only row of models.json
    assert memory.find_model("Llama-3.1-8B").vision is None
    with pytest.raises(ValueError, match="unknown model 'google/paligemma-3b'.*Qwen/Qwen2-VL-7B-Instruct"):
        memory.plan_serving("google/paligemma-3b", "L4 24 GB")


# ---- profiling ---------------------------------------------------------------------------------------


def test_decoder_only_profiling_fills_the_token_budget_with_maximal_images():
    phi = vision(PHI)
    assert vm.profile_images(phi, 30000, 256) == 30000 // 781 == 38
    assert vm.profile_images(phi, 2048, 256) == 2  # 2 x 781 tokens fit 2048
    assert vm.profile_images(phi, 512, 256) == 1  # at least one, even when it overflows the budget
    assert vm.profile_images(phi, 30000, 8) == 8  # never more requests than max_num_seqs
    assert vm.profile_images(phi, 30000, 256, limit_mm_per_prompt=2) == 2 * (30000 // (2 * 781))


def test_cross_attention_profiling_gives_every_sequence_an_image_whatever_max_model_len():
    mllama = vision(MLLAMA)
    assert vm.profile_images(mllama, 2048, 256) == vm.profile_images(mllama, 131072, 256) == 256
    plans = [memory.plan_serving(MLLAMA, "A100 80 GB", max_model_len=n, engine="v0") for n in (128, 1024, 2048)]
    assert len({p.activations for p in plans}) == 1 and all(p.status == "profile_oom" for p in plans)


def test_profiling_oom_names_the_dummy_images_and_fixes_never_suggest_a_useless_max_model_len():
    plan = memory.plan_serving(MLLAMA, "A100 80 GB", max_model_len=1024, engine="v0")
    assert plan.status == "profile_oom" and "256 maximal dummy images" in plan.message
    found = memory.fixes(plan)
    assert found and all("--max-model-len" not in fix.change for fix in found)
    assert all(fix.plan.ok for fix in found)
    assert found[0].change.startswith("--max-num-seqs") and found[0].plan.images_profiled < 256


def test_when_the_profiling_batch_is_max_model_len_a_shorter_one_is_a_real_fix():
    # vLLM 0.6 without chunked prefill profiles max_model_len tokens (the Phi-3.5-vision A10G log)
    gpu = memory.GPU("A10G (log)", int(21.98 * memory.GiB), 8.6)
    plan = memory.plan_serving(PHI, gpu, max_model_len=131072, engine="v0")
    assert plan.status == "profile_oom"
    fix = memory.cheapest_fix(plan)
    assert fix.change.startswith("--max-model-len") and fix.plan.ok
    assert memory.plan_serving(PHI, gpu, max_model_len=fix.plan.max_model_len + 16, engine="v0").status != "ok"


def test_weights_that_do_not_fit_name_quantisation_tensor_parallelism_or_a_larger_card():
    plan = memory.plan_serving(MLLAMA, "T4 16 GB", dtype="fp16", max_model_len=4096, max_num_seqs=2)
    assert plan.status == "weights_dont_fit"
    changes = [fix.change for fix in memory.fixes(plan)]
    assert not any("--max-model-len" in c or "--max-num-seqs" in c for c in changes)
    assert any("int4 checkpoint" in c for c in changes)  # a pre-quantised checkpoint, not just a flag
    assert any(c.startswith("--tensor-parallel-size") for c in changes)
    assert any(c.startswith("a larger card") for c in changes)


def test_text_models_plan_as_before():
    plan = memory.plan_serving("Llama-3.1-8B", "H100 80 GB", max_model_len=8192)
    assert plan.images_profiled == 0 and plan.engine == "v1"
    assert plan.activations == memory.serving_activation_bytes(memory.real_models()["Llama-3.1-8B"], 8192, 1024)


def test_unknown_engine_is_refused():
    with pytest.raises(ValueError, match="unknown engine 'v2'"):
        memory.plan_serving(PHI, "L4 24 GB", engine="v2")


# ---- the public start-up logs ------------------------------------------------------------------------


CASES = vision_logs.logged_cases()


@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_every_logged_case_gets_its_failure_class(case):
    result = vision_logs.plan_case(case)
    assert result.predicted_class == result.logged_class, result.plan.message


@pytest.mark.parametrize(
    "case",
    [c for c in CASES if "kv_tokens" in c["logged"] and not c["gpu"].get("memory_assumed")],
    ids=lambda c: c["id"],
)
def test_logged_kv_tokens_within_10_percent(case):
    result = vision_logs.plan_case(case)
    assert result.predicted_kv_tokens == pytest.approx(result.logged_kv_tokens, rel=0.10)


def test_a_card_calibrated_on_a_text_model_of_the_same_log_is_a_24_gb_card():
    case = next(c for c in CASES if "calibrate" in c["gpu"])
    assert 23 * memory.GiB < vision_logs.implied_memory_bytes(case) < 24 * memory.GiB
    result = vision_logs.plan_case(case)  # then the VLM's own line: the vision tower's weights and 7 dummy images
    assert result.plan.images_profiled == 4096 // 576
    assert result.plan.weights_on_gpu / memory.GiB == pytest.approx(case["logged"]["weights_gib"], rel=0.01)


def test_cases_cover_every_vlm_and_every_failure_class():
    assert {c["model"] for c in CASES} >= {PHI, LLAVA, MLLAMA}
    assert {c["logged"]["class"] for c in CASES} == {"fits", "kv_error", "oom"}
    assert all(c["source"] for c in CASES)


@pytest.mark.parametrize("case", [c for c in CASES if "weights_gib" in c["logged"]], ids=lambda c: c["id"])
def test_weights_per_gpu_match_the_logged_loading_line_within_2_percent(case):
    # "Loading model weights took X GB" (GiB) per GPU; vLLM leaves out a layer or two of the vision towers and
    # does not shard every vision weight across tensor-parallel ranks, hence not exact
    plan = vision_logs.plan_case(case).plan
    assert plan.weights_on_gpu / memory.GiB == pytest.approx(case["logged"]["weights_gib"], rel=0.02)
