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
from tinyformer.widgets import AttentionExplorer, BudgetCalculator, attention_weights_viewer, kv_cache_stepper

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


def main() -> int:
    torch.manual_seed(0)
    tokenizer = build_tokenizer()
    model = Transformer(ModelConfig.preset("nano", vocab_size=len(tokenizer))).eval()
    explorer = AttentionExplorer(measure=False)
    stepper = kv_cache_stepper(model, tokenizer, max_new_tokens=10)
    calculator = BudgetCalculator()
    viewer = attention_weights_viewer(model, tokenizer)
    rows = [
        ("attention weights viewer", *time_updates(viewer, viewer.query, [1, 2, 3, 4])),
        ("attention explorer", *time_updates(explorer, explorer.seq_len, [2048, 4096, 8192])),
        ("KV cache stepper", *time_updates(stepper, stepper.step, [1, 2, 3, 4])),
        ("GPU budget calculator", *time_updates(calculator, calculator.max_model_len, [4096, 8192, 16384])),
    ]
    print(f"{'widget':24} {'numbers ms':>11} {'figure ms':>10} {'total ms':>9}  (target {TARGET_MS} ms)")
    for name, numbers_ms, figure_ms in rows:
        total = numbers_ms + figure_ms
        verdict = "ok" if total <= TARGET_MS else "OVER"
        print(f"{name:24} {numbers_ms:>11.1f} {figure_ms:>10.1f} {total:>9.1f}  {verdict}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
