"""How long each widget takes to update after a slider move, against the 200 ms target; exit 1 if one misses it.

    python benchmarks/widget_latency.py             # in the kernel (no browser)
    python benchmarks/widget_latency.py --browser   # from the key press to the screen, in JupyterLab in Chromium

In the kernel: moves one slider of each widget back and forth and times, separately, the numbers panel (pure
functions and HTML) and the figure (matplotlib to PNG). With --browser: runs the browser test
(tests/test_browser_widgets.py, which checks the numbers on screen) on its own and reads the times it recorded from
the key press to the new numbers and to the new figure, which add the round trip through JupyterLab. The test asserts
no time (the suite's box is shared); run this on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from tinyformer import ModelConfig, Transformer, build_tokenizer
from tinyformer.engine import Engine
from tinyformer.widgets import AttentionExplorer, BudgetCalculator, attention_weights_viewer, kv_cache_stepper
from tinyformer.widgets.engine_stepper import engine_stepper

TARGET_MS = 200
REPEATS = 10
REPO = Path(__file__).resolve().parents[1]
BROWSER_TEST = "tests/test_browser_widgets.py"
BROWSER_TIMES = REPO / "test-results"  # the test writes widget_latency_NN.json here, one per notebook


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


def verdict(ms: float) -> str:
    return "ok" if ms <= TARGET_MS else "OVER"


def in_the_kernel() -> int:
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
    over = 0
    for name, numbers_ms, figure_ms in rows:
        total = numbers_ms + figure_ms
        over += total > TARGET_MS
        print(f"{name:24} {numbers_ms:>11.1f} {figure_ms:>10.1f} {total:>9.1f}  {verdict(total)}")
    return 1 if over else 0


def in_the_browser() -> int:
    """Run the browser test alone, then print the key-press times it recorded (median of its presses)."""
    for old in BROWSER_TIMES.glob("widget_latency_*.json"):
        old.unlink()  # a file left by an earlier run would be read as this one's
    test = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", BROWSER_TEST], cwd=REPO)
    files = sorted(BROWSER_TIMES.glob("widget_latency_*.json"))
    if test.returncode != 0 or not files:
        print(f"the browser test failed or recorded no times (exit {test.returncode}): no latencies to compare")
        return 1
    header = f"{'lesson':6} {'widget':24} {'numbers ms':>11} {'figure ms':>10} {'slowest ms':>11}"
    print(f"{header}  (target {TARGET_MS} ms, median key press to new figure)")
    over = 0
    for path in files:
        for widget, t in json.loads(path.read_text()).items():
            over += t["figure_ms_median"] > TARGET_MS
            print(
                f"{path.stem[-2:]:6} {widget:24} {t['numbers_ms_median']:>11.0f} {t['figure_ms_median']:>10.0f} "
                f"{t['figure_ms_max']:>11.0f}  {verdict(t['figure_ms_median'])}"
            )
    return 1 if over else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--browser", action="store_true", help="from key press to screen, in JupyterLab in Chromium")
    return in_the_browser() if parser.parse_args().browser else in_the_kernel()


if __name__ == "__main__":
    raise SystemExit(main())
