"""How long each widget takes to update after a slider move, in the kernel (no browser), against the 200 ms target.

    python benchmarks/widget_latency.py

Moves one slider of each widget back and forth and times, separately, the numbers panel (pure functions
and HTML) and the figure (matplotlib to PNG). The browser test (tests/test_browser_widgets.py) measures
the same from the key press to the change on screen, which adds the round trip through JupyterLab.
"""

from __future__ import annotations

import statistics
import time

import torch

from tinyformer import ModelConfig, Transformer, build_tokenizer
from tinyformer.engine import Engine
from tinyformer.widgets import AttentionExplorer, BudgetCalculator, attention_weights_viewer, kv_cache_stepper
from tinyformer.widgets.engine_stepper import engine_stepper

TARGET_MS = 200
REPEATS = 10


def time_updates(widget, control, values) -> tuple[float, float]:
    """Median ms of (numbers, figure) over REPEATS moves of ``control`` through ``values``."""
    numbers, figure = [], []
    for i in range(REPEATS):
        control.value = values[i % len(values)]  # no event loop here: the widget refreshes at once
        total = widget.last_update_seconds * 1000  # numbers, then figure, as after a slider move
        start = time.perf_counter()
        widget.numbers_html()
        numbers.append((time.perf_counter() - start) * 1000)
        figure.append(total - numbers[-1])
    return statistics.median(numbers), statistics.median(figure)


def watched_engine(model) -> Engine:
    """Lesson 13's stepper trace, shaped alike (ids drawn at random): three prompts sharing 24 tokens, one of 40,
    four short ones, 24 new tokens each, on 13 blocks of 8 tokens: prefix hits, chunked prefill, preemptions."""
    ids = torch.randint(0, model.config.vocab_size, (1000,), generator=torch.Generator().manual_seed(0)).tolist()
    prompts = [ids[:24] + ids[100 + 10 * i : 104 + 10 * i] for i in range(3)]
    prompts += [ids[300:340]] + [ids[400 + 30 * i : 410 + 30 * i + 3 * i] for i in range(4)]
    engine = Engine(model, num_blocks=13, block_size=8, max_num_seqs=6, max_num_batched_tokens=32, record_steps=True)
    engine.generate(prompts, 24)
    return engine


def main() -> int:
    torch.manual_seed(0)
    tokenizer = build_tokenizer()
    model = Transformer(ModelConfig.preset("nano", vocab_size=len(tokenizer))).eval()
    explorer = AttentionExplorer(measure=False)
    stepper = kv_cache_stepper(model, tokenizer, max_new_tokens=10)
    calculator = BudgetCalculator()
    viewer = attention_weights_viewer(model, tokenizer)
    engine_view = engine_stepper(watched_engine(model))
    rows = [
        ("attention weights viewer", *time_updates(viewer, viewer.query, [1, 2, 3, 4])),
        ("attention explorer", *time_updates(explorer, explorer.seq_len, [2048, 4096, 8192])),
        ("KV cache stepper", *time_updates(stepper, stepper.step, [1, 2, 3, 4])),
        ("GPU budget calculator", *time_updates(calculator, calculator.max_model_len, [4096, 8192, 16384])),
        ("engine stepper", *time_updates(engine_view, engine_view.step, [1, 2, 3, 4])),
    ]
    print(f"{'widget':24} {'numbers ms':>11} {'figure ms':>10} {'total ms':>9}  (target {TARGET_MS} ms)")
    for name, numbers_ms, figure_ms in rows:
        total = numbers_ms + figure_ms
        verdict = "ok" if total <= TARGET_MS else "OVER"
        print(f"{name:24} {numbers_ms:>11.1f} {figure_ms:>10.1f} {total:>9.1f}  {verdict}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
