"""Training targets of the core package, measured in one run and printed as a table.

(a) The nano preset trained from scratch with its recipe (TrainConfig.for_preset): final validation loss next to the
    corpus's exact Bayes floor on the same windows, the gap, and the seconds it took.
    Target: gap <= 0.05 nats/token within 60 s on 2 CPU cores.
(b) One training step (forward, cross-entropy, backward, SGD update) of tinyformer.Transformer vs
    transformers.GPT2LMHeadModel with eager attention: same config, batch and weights, timed
    interleaved over several repeats; the median per step of each, side by side, and their ratio.
    Target: ratio <= 1.1.

    python benchmarks/train_benchmark.py [--repeats 7] [--steps 10] [--threads 2] [--skip-training]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from tinyformer.config import ModelConfig
from tinyformer.data import Corpus, TokenStream
from tinyformer.export import to_hf_gpt2
from tinyformer.model import Transformer
from tinyformer.tokenizer import build_tokenizer
from tinyformer.train import TrainConfig, lm_loss, train

GAP_TARGET, SECONDS_TARGET, RATIO_TARGET = 0.05, 60.0, 1.1


def loss_vs_floor(stream: TokenStream, preset: str = "nano") -> dict:
    cfg = TrainConfig.for_preset(preset)
    torch.manual_seed(cfg.seed)
    model = Transformer(ModelConfig.preset(preset, vocab_size=len(stream.tokenizer)))
    result = train(model, stream, cfg, progress=False)
    # train() validates on stream.val_windows(context_len, eval_windows): the floor of those same windows.
    floor = stream.bayes_loss(stream.val_windows(cfg.context_len, cfg.eval_windows))
    gap = result.final_val_loss - floor
    return {
        "preset": preset,
        "steps": cfg.steps,
        "val_loss": result.final_val_loss,
        "floor": floor,
        "gap": gap,
        "seconds": result.seconds,
        "ok": gap <= GAP_TARGET and result.seconds <= SECONDS_TARGET,
    }


def step_timer(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: TrainConfig):
    """A function running ``n`` full training steps on (x, y) and returning seconds per step."""
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum)
    model.train()

    def run(n: int) -> float:
        start = time.perf_counter()
        for _ in range(n):
            out = model(x)
            logits = out if isinstance(out, torch.Tensor) else out.logits  # GPT-2 returns an output object
            loss = lm_loss(logits, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        return (time.perf_counter() - start) / n

    return run


def step_time_vs_gpt2(stream: TokenStream, preset: str, repeats: int, steps: int) -> dict:
    cfg = TrainConfig.for_preset(preset)
    torch.manual_seed(0)
    ours = Transformer(ModelConfig.preset(preset, vocab_size=len(stream.tokenizer)))
    hf = to_hf_gpt2(ours)  # a copy of the same weights
    hf.set_attn_implementation("eager")
    x, y = stream.batch("train", cfg.batch_size, cfg.context_len, torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(ours(x), hf(x).logits, atol=1e-4, rtol=0)  # really the same model
    timers = {"tinyformer": step_timer(ours, x, y, cfg), "gpt2": step_timer(hf, x, y, cfg)}
    times = {name: [] for name in timers}
    for timer in timers.values():
        timer(3)  # warm-up: allocator, thread pool, autograd graph caches
    for r in range(repeats):
        order = list(timers) if r % 2 == 0 else list(reversed(timers))  # alternate who goes first
        for name in order:
            times[name].append(timers[name](steps))
    ours_ms, hf_ms = (statistics.median(times[name]) * 1e3 for name in timers)
    return {
        "preset": preset,
        "batch": f"{cfg.batch_size}x{cfg.context_len}",
        "tinyformer_ms": ours_ms,
        "gpt2_ms": hf_ms,
        "ratio": ours_ms / hf_ms,
        "ok": ours_ms / hf_ms <= RATIO_TARGET,
    }


def print_table(title: str, rows: list[dict], formats: dict[str, str]) -> None:
    cells = [[format(row[key], fmt) for key, fmt in formats.items()] for row in rows]
    widths = [max(len(key), *(len(c[i]) for c in cells)) for i, key in enumerate(formats)]
    print(f"\n{title}")
    print("  ".join(key.rjust(w) for key, w in zip(formats, widths, strict=True)))
    for row in cells:
        print("  ".join(cell.rjust(w) for cell, w in zip(row, widths, strict=True)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2, help="torch threads (CI has 2 cores)")
    parser.add_argument("--repeats", type=int, default=7, help="interleaved timing rounds per model")
    parser.add_argument("--steps", type=int, default=10, help="training steps per timing round")
    parser.add_argument("--skip-training", action="store_true", help="only the step-time comparison")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    stream = TokenStream(Corpus(seed=0), build_tokenizer())
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")

    if not args.skip_training:
        row = loss_vs_floor(stream)
        target = f"target: gap <= {GAP_TARGET} nats within {SECONDS_TARGET:.0f} s"
        formats = {"preset": "", "steps": "d", "val_loss": ".4f", "floor": ".4f", "gap": ".4f", "seconds": ".1f"}
        print_table(f"(a) validation loss vs exact Bayes floor ({target})", [row], {**formats, "ok": ""})
    rows = [step_time_vs_gpt2(stream, preset, args.repeats, args.steps) for preset in ("nano", "micro")]
    print_table(
        f"(b) training step time, median of {args.repeats} interleaved rounds of {args.steps} steps "
        f"(target: ratio <= {RATIO_TARGET})",
        rows,
        {"preset": "", "batch": "", "tinyformer_ms": ".2f", "gpt2_ms": ".2f", "ratio": ".3f", "ok": ""},
    )


if __name__ == "__main__":
    main()
