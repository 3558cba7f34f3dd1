"""The widgets' numbers come from the tested pure functions; controls update them; a static PNG is attached."""

from __future__ import annotations

import base64

import pytest
import torch

from tinyformer import ModelConfig, Transformer, build_tokenizer, memory
from tinyformer.generate import generate
from tinyformer.widgets import (
    AttentionExplorer,
    BudgetCalculator,
    attention_row,
    attention_weights,
    attention_weights_viewer,
    explorer_numbers,
    kv_cache_stepper,
    trace_generation,
)
from tinyformer.widgets.base import Debouncer
from tinyformer.widgets.budget import CPU_BACKEND, TINY_MODEL

PNG_MAGIC = b"\x89PNG"


def shown(widget, css: str) -> str:
    """The data-value of the number with CSS class ``css`` in the widget's numbers panel."""
    html = widget.numbers.value
    start = html.index(f'class="{css}" data-value="') + len(f'class="{css}" data-value="')
    return html[start : html.index('"', start)]


def test_explorer_numbers_are_the_memory_formulas():
    x = explorer_numbers(4096, 32, 32, 2, "bf16", 128, 80 * memory.GiB)
    assert x.scores_per_layer == memory.attention_scores_bytes(4096, 32, 2, "bf16") == 2 * 32 * 4096**2 * 2
    assert x.scores_all_layers == 32 * x.scores_per_layer
    assert x.kv_cache == 2 * 32 * 32 * 128 * 2 * 4096 * 2  # K and V x layers x heads x head_dim x bf16 x n x batch
    # the longest n whose one-layer score matrix fits: 2 x 32 x n^2 x 2 bytes <= 80 GiB
    assert 128 * x.longest_fitting_n**2 <= 80 * memory.GiB < 128 * (x.longest_fitting_n + 1) ** 2


def test_explorer_updates_its_numbers_when_a_slider_moves():
    widget = AttentionExplorer(seq_len=1024, n_head=4, n_layer=2, batch=1, dtype="fp32", head_dim=32, measure=False)
    assert int(shown(widget, "tf-scores")) == memory.attention_scores_bytes(1024, 4, 1, "fp32")
    widget.seq_len.value = 2048  # no event loop here, so the debounced update runs at once
    assert int(shown(widget, "tf-scores")) == memory.attention_scores_bytes(2048, 4, 1, "fp32")
    assert int(shown(widget, "tf-kv")) == 2 * 2 * 4 * 32 * 4 * 2048  # K and V x layers x heads x head_dim x fp32 x n
    assert bytes(widget.image.value).startswith(PNG_MAGIC)


def test_explorer_measures_small_settings_on_this_machine():
    widget = AttentionExplorer(seq_len=256, n_head=2, n_layer=1, batch=1, dtype="fp32", head_dim=32, measure=True)
    from tinyformer.widgets.attention_memory import measured_scores

    measured = measured_scores(256, 2, 1, "fp32", 32)
    assert measured == pytest.approx(memory.attention_scores_bytes(256, 2, 1, "fp32"), rel=0.02)
    assert measured_scores(131072, 64, 64, "fp32", 128) is None  # too big to run: no point plotted
    assert bytes(widget.image.value).startswith(PNG_MAGIC)


def test_widgets_carry_a_static_png_for_readers_without_a_widget_front_end():
    widget = AttentionExplorer(measure=False)
    bundle = widget._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in bundle
    assert base64.b64decode(bundle["image/png"]).startswith(PNG_MAGIC)


def test_budget_calculator_shows_vllms_line_for_the_tiny_model_on_cpu():
    widget = BudgetCalculator(
        model=TINY_MODEL, gpu=CPU_BACKEND, dtype="fp32", max_model_len=256, kv_cache_memory_bytes=2_621_440
    )
    line = "CPU KV cache size: 1,280 tokens, Maximum concurrency for 256 tokens per request: 5.00x"
    assert line in widget.numbers.value
    assert 'data-tokens="1280"' in widget.numbers.value


def test_budget_calculator_follows_its_controls_and_names_the_cheapest_fix():
    widget = BudgetCalculator(model="Llama-3.1-8B", gpu="L4 24 GB", max_model_len=8192)
    # By hand: bf16 weights = 2 bytes x 8,030,261,248 published parameters; KV per token = K and V x 32 layers x
    # 8 KV heads x 128 x 2 bytes; the budget holds whole 16-token blocks, a request 8192 / 16 = 512 of them.
    assert int(shown(widget, "tf-weights")) == 2 * 8_030_261_248
    assert int(shown(widget, "tf-kv-per-token")) == 2 * 32 * 8 * 128 * 2 == 131_072
    blocks = int(shown(widget, "tf-kv-budget")) // (131_072 * 16)
    assert f'data-tokens="{blocks * 16}"' in widget.numbers.value
    assert f"Maximum concurrency for 8,192 tokens per request: {blocks / 512:.2f}x" in widget.numbers.value
    assert 'class="tf-fix"' not in widget.numbers.value
    widget.max_model_len.value = 131072
    plan = memory.plan_serving("Llama-3.1-8B", "L4 24 GB", max_model_len=131072)
    assert "To serve at least one request" in widget.numbers.value
    assert memory.cheapest_fix(plan).change in widget.numbers.value
    widget.model.value = "Llama-3.1-70B"
    assert "out of memory while loading the weights" in widget.numbers.value


def test_kv_trace_gives_generates_tokens_and_grows_one_row_per_step():
    torch.manual_seed(0)
    tokenizer = build_tokenizer()
    model = Transformer(ModelConfig.preset("nano", vocab_size=len(tokenizer))).eval()
    prompt = tokenizer.encode("the cat near the dogs")
    trace = trace_generation(model, prompt, 8)
    assert trace.tokens == generate(model, [prompt], 8).tokens[0]
    assert [s.cache_len for s in trace.steps] == list(range(len(prompt), len(prompt) + 8))
    for step in trace.steps:
        assert step.nbytes == trace.bytes_per_token * step.cache_len
        assert all(shape[2] == step.cache_len for shape in step.key_shapes)
        for layer_weights in step.attention:  # [nh, S]: the newest token's weights over the cache
            assert layer_weights.shape == (2, step.cache_len)
            assert layer_weights.sum(axis=-1) == pytest.approx([1.0, 1.0], abs=1e-5)


def test_kv_stepper_shows_the_cache_at_the_chosen_step():
    torch.manual_seed(0)
    tokenizer = build_tokenizer()
    model = Transformer(ModelConfig.preset("nano", vocab_size=len(tokenizer))).eval()
    widget = kv_cache_stepper(model, tokenizer, "the cat near the dogs", max_new_tokens=6)
    assert shown(widget, "tf-cache-len") == "5"
    widget.step.value = 3
    assert shown(widget, "tf-cache-len") == "8"
    assert int(shown(widget, "tf-cache-bytes")) == widget.trace.bytes_per_token * 8


def test_kv_trace_refuses_a_sequence_past_the_position_table():
    model = Transformer(ModelConfig.preset("nano", vocab_size=60))
    with pytest.raises(ValueError, match="n_positions=128"):
        trace_generation(model, [1] * 120, 20)


@pytest.fixture
def nano_model_and_tokenizer():
    torch.manual_seed(0)
    tokenizer = build_tokenizer()
    return Transformer(ModelConfig.preset("nano", vocab_size=len(tokenizer))).eval(), tokenizer


def test_attention_rows_are_the_models_weights_masked_after_the_query(nano_model_and_tokenizer):
    model, tokenizer = nano_model_and_tokenizer
    ids = tokenizer.encode("the cat near the dogs sleeps .")
    weights = attention_weights(model, ids)  # [L, nh, T, T]
    with torch.no_grad():
        _, expected = model(torch.tensor([ids]), return_attention=True)
    assert weights.shape == (2, 2, 7, 7)
    for layer in range(2):
        assert weights[layer] == pytest.approx(expected[layer][0].numpy(), abs=1e-7)
    row = attention_row(weights, layer=1, head=0, query=3)
    assert row.visible == 4
    assert row.weights[:4].sum() == pytest.approx(1.0, abs=1e-6)
    assert (row.weights[4:] == 0).all()  # the causal mask: exactly zero, not just small
    assert row.strongest == int(weights[1, 0, 3].argmax())


def test_attention_weights_viewer_follows_its_controls_and_refuses_an_empty_sentence(nano_model_and_tokenizer):
    model, tokenizer = nano_model_and_tokenizer
    widget = attention_weights_viewer(model, tokenizer, "the cat near the dogs sleeps .")
    assert shown(widget, "tf-visible") == "1" and shown(widget, "tf-row-sum") == "1.000000"
    widget.query.value, widget.head.value = 5, 1
    expected = attention_row(attention_weights(model, tokenizer.encode("the cat near the dogs sleeps .")), 0, 1, 5)
    assert shown(widget, "tf-visible") == "6"
    assert [float(x) for x in shown(widget, "tf-row").split()] == pytest.approx(expected.weights, abs=1e-6)
    assert shown(widget, "tf-future") == "0"

    widget.sentence.value = "   "
    assert "type at least one word" in widget.numbers.value and shown(widget, "tf-visible") == "6"
    widget.sentence.value = "the dogs run ."  # shorter: the slider's range follows, the figure is rebuilt
    assert widget.query.max == 3 and widget.query.value == 3
    assert "tf-error" not in widget.numbers.value
    assert bytes(widget.image.value).startswith(PNG_MAGIC)


def test_debouncer_runs_a_lone_event_at_once_and_a_burst_as_one_more_run():
    import asyncio

    calls = []
    debounced = Debouncer(lambda: calls.append(1), delay=0.05)
    debounced()  # no event loop: at once
    assert calls == [1]

    async def burst():
        debounced()  # the first of a burst runs at once: a single key press must not wait
        assert calls == [1, 1]
        for _ in range(4):
            debounced()
        assert calls == [1, 1]  # merged ...
        await asyncio.sleep(0.1)
        assert calls == [1, 1, 1]  # ... into one trailing run with the last value
        await asyncio.sleep(0.1)
        debounced()  # a lone event after a pause: at once again
        assert calls == [1, 1, 1, 1]

    asyncio.run(burst())


@pytest.mark.parametrize("which", ["explorer", "stepper", "budget", "viewer", "engine"])
def test_blitted_frames_look_like_a_full_drawing(which):
    """The widgets draw only what moved over frames drawn once (FigureRenderer). After slider moves, what
    is sent must look like a full drawing of the same figure: the same size, and at most 0.5 % of pixels
    differ (lines and bars drawn over the spines instead of under)."""
    import io

    import numpy as np
    from PIL import Image

    def figure_png(fig) -> bytes:  # the reference: matplotlib's full drawing of the same figure
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=72)
        return buf.getvalue()

    def pixels(png: bytes) -> np.ndarray:
        return np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)

    torch.manual_seed(0)
    tokenizer = build_tokenizer()
    model = Transformer(ModelConfig.preset("nano", vocab_size=len(tokenizer))).eval()
    # Each list ends with a move that changes the frames themselves (limits, ticks), except the stepper's,
    # whose frames are fixed by design (sized for the last step).
    widget, moves = {
        "explorer": lambda: (AttentionExplorer(measure=False), [("seq_len", 2048), ("seq_len", 8192), ("n_head", 7)]),
        "stepper": lambda: (
            kv_cache_stepper(model, tokenizer, max_new_tokens=10),
            [("step", 3), ("step", 7), ("layer", 1)],
        ),
        "budget": lambda: (
            BudgetCalculator(),
            [("max_model_len", 4096), ("max_model_len", 16384), ("gpu", "A100 80 GB")],
        ),
        "viewer": lambda: (
            attention_weights_viewer(model, tokenizer),
            [("query", 1), ("query", 5), ("sentence", "the dogs run .")],
        ),
        "engine": lambda: (engine_stepper_of(model), [("step", 3), ("step", 9)]),  # its timeline kept still
    }[which]()
    previous = pixels(bytes(widget.image.value))
    for control, value in moves:
        getattr(widget, control).value = value
        sent, full = pixels(bytes(widget.image.value)), pixels(figure_png(widget.figure))
        assert sent.shape == full.shape
        assert (sent != full).any(axis=2).mean() < 0.005, f"after {control} = {value!r}"
        assert (sent != previous).any()  # the move changed the picture
        previous = sent


def engine_stepper_of(model):
    from tinyformer.engine import Engine
    from tinyformer.widgets.engine_stepper import engine_stepper

    engine = Engine(model, num_blocks=9, block_size=8, max_num_seqs=4, max_num_batched_tokens=16, record_steps=True)
    engine.generate([[5, 6, 7] * 4, [8, 9] * 7, [10] * 20], 12)
    return engine_stepper(engine)


def test_budget_calculator_shows_image_tokens_and_how_many_images_fit():
    phi = "microsoft/Phi-3.5-vision-instruct"
    widget = BudgetCalculator(model=phi, gpu="A100 40 GB", max_model_len=16384)
    plan = memory.plan_serving(phi, "A100 40 GB", max_model_len=16384)
    assert widget.plan() == plan and plan.ok
    # 4 crops of 336 px + the global view: 5 x 144 tokens + separators (Phi-3.5-vision's largest image)
    assert int(shown(widget, "tf-image-tokens")) == 781
    assert int(shown(widget, "tf-images-per-request")) == 16384 // 781
    kv_tokens = (plan.capacity.num_blocks - 1) * 16  # less vLLM's null block
    assert int(shown(widget, "tf-images-in-kv")) == kv_tokens // 781 > 0
    assert int(shown(widget, "tf-profile-images")) == plan.images_profiled == 2048 // 781
    widget.model.value = "Llama-3.1-8B"  # a text model: no image rows
    assert "tf-image-tokens" not in widget.numbers.value


def test_budget_calculator_says_llama_vision_images_are_cross_attention_and_names_a_fix_that_helps():
    widget = BudgetCalculator(model="meta-llama/Llama-3.2-11B-Vision-Instruct", gpu="A100 80 GB", max_model_len=8192)
    assert int(shown(widget, "tf-image-tokens")) == 6404
    assert shown(widget, "tf-images-per-request") == ""  # one text position per image: not max_model_len's
    assert "profiling run" in widget.numbers.value and "256 maximal dummy images" in widget.numbers.value
    fix = memory.cheapest_fix(widget.plan())
    assert fix.change.startswith("--max-num-seqs") and fix.change in widget.numbers.value


# ----- lesson 13's engine stepper ------------------------------------------------------------------


@pytest.fixture(scope="module")
def watched():
    """A tight engine run (11 usable blocks of 8 tokens, a 16-token budget): prefix hits, chunked prefill and
    preemption. Besides the engine's own recorder, a spy notes what the model runner was handed at each step."""
    from tinyformer.engine import Engine

    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=60, n_positions=128, n_embd=64, n_layer=1, n_head=2)).eval()
    shared = list(range(1, 21))
    prompts = [shared + [30 + i, 40 + i] for i in range(3)] + [
        [(7 * i + j) % 60 for j in range(4 + 9 * i)] for i in range(5)
    ]
    e = Engine(model, num_blocks=12, block_size=8, max_num_seqs=4, max_num_batched_tokens=16, record_steps=True)
    seen, run = [], e.runner.run

    def spy(scheduled):
        seen.append(
            dict(
                tables={s.seq_id: list(s.block_table) for s in e.scheduler.running},
                running=[s.seq_id for s in e.scheduler.running],
                waiting=[s.seq_id for s in e.scheduler.waiting],
                tokens={s.seq_id: n for s, n in scheduled},
                cached_free={b for b in e.block_manager.free if e.block_manager.blocks[b].hash is not None},
            )
        )
        return run(scheduled)

    e.runner.run = spy
    e.generate(prompts, 24)
    assert e.stats.preemptions and e.stats.prefix_cache_hit_tokens and len(seen) == len(e.snapshots)
    return e, seen


def test_engine_stepper_draws_at_step_k_the_blocks_and_queues_the_engine_ran_with(watched):
    """Rejects a picture off by one step, a block coloured for the wrong request (or left out), a free block drawn
    as held, a queue out of order, and a prefill chunk shown as a decode."""
    from tinyformer.widgets.engine_stepper import NULL_COLOUR, engine_stepper, request_colour

    e, seen = watched
    stepper = engine_stepper(e)
    for k, truth in enumerate(seen):
        stepper.step.value = k  # no event loop here: the figure is redrawn at once
        cells = stepper.pool_image.get_array().reshape(-1, 4)[: len(e.block_manager.blocks)]
        first_holder = {}
        for seq_id in truth["running"]:
            for block in truth["tables"][seq_id]:
                first_holder.setdefault(block, seq_id)
        for seq_id in truth["running"]:
            coloured = {b for b, c in enumerate(cells) if tuple(c) == request_colour(seq_id)}
            assert coloured == {b for b, s in first_holder.items() if s == seq_id}, (k, seq_id)
        assert tuple(cells[0]) == NULL_COLOUR
        free = set(range(1, len(cells))) - set(first_holder)
        grey = {b for b in free if tuple(cells[b]) == (0.78, 0.78, 0.78, 1.0)}
        assert grey == truth["cached_free"], k
        assert all(tuple(cells[b]) == (1.0, 1.0, 1.0, 1.0) for b in free - grey), k

        running_row = stepper.queue_colours[0][: len(truth["running"])]
        assert [tuple(c) for c in running_row] == [request_colour(s) for s in truth["running"]], k
        waiting_row = stepper.queue_colours[1][: len(truth["waiting"])]
        assert [tuple(c) for c in waiting_row] == [request_colour(s) for s in truth["waiting"]], k
        for seq_id, text in zip(truth["running"], stepper.queue_texts[0], strict=False):
            label = text.get_text()
            n = truth["tokens"].get(seq_id)
            if n is None:
                assert label == f"r{seq_id}"
            elif label.endswith(" D"):
                assert n == 1, (k, seq_id, label)
            else:
                assert label == f"r{seq_id} P{n}", (k, seq_id)
        assert shown(stepper, "tf-eng-running") == " ".join(map(str, truth["running"]))
        assert shown(stepper, "tf-eng-waiting") == " ".join(map(str, truth["waiting"]))
    assert bytes(stepper.image.value).startswith(PNG_MAGIC)


def test_engine_stepper_marks_every_prefix_hit_and_preemption(watched):
    from tinyformer.widgets.engine_stepper import engine_stepper

    e, _ = watched
    stepper = engine_stepper(e)
    for snap in e.snapshots[1:]:  # step 0 was drawn when the widget was made
        if not (snap.prefix_hits or snap.preempted or snap.step % 10 == 0):
            continue  # a sample of the quiet steps: each redraw sends a PNG
        stepper.step.value = snap.step
        assert len(stepper.hit_marks.get_xdata()) == sum(snap.prefix_hits.values())
        title = stepper.queue_ax.get_title()
        assert all(f"r{s}" in title.split("preempted")[-1] for s in snap.preempted) and (
            ("preempted" in title) == bool(snap.preempted)
        )


def test_engine_stepper_needs_recorded_steps():
    from tinyformer.engine import Engine
    from tinyformer.widgets.engine_stepper import EngineStepper, engine_stepper

    model = Transformer(ModelConfig(vocab_size=60, n_positions=128, n_embd=64, n_layer=1, n_head=2))
    with pytest.raises(ValueError, match="record_steps=True"):
        engine_stepper(Engine(model, num_blocks=4, block_size=8, max_num_seqs=2, max_num_batched_tokens=16))
    with pytest.raises(ValueError, match="no steps to show"):
        EngineStepper([])
