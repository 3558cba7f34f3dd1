"""The two architectures trained alike: GPT-2 (learned positions, LayerNorm, GELU) against Llama (RoPE, RMSNorm,
SwiGLU, no biases) with one K/V head per query head and with one K/V head for all (multi-query), all at the nano
sizes, with nano's recipe (TrainConfig.for_preset("nano")), seed and data. Printed as a table: parameters,
final validation loss next to the corpus's exact Bayes floor on the same windows, the gap, and the seconds.

The sizes are the same (d=64, 2 layers, 2 heads); the parameter counts differ only by what each arch has that the
other has not (GPT-2: the 128-row position table and the biases; Llama: SwiGLU's 8/3 width rounded up to 176).
Target: every arch within 0.05 nats of the floor, as nano is (benchmarks/train_benchmark.py).

    python benchmarks/llama_vs_gpt2.py [--threads 2] [--steps N]
"""

from __future__ import annotations

import argparse
import sys

import torch

from tinyformer.config import ModelConfig
from tinyformer.data import Corpus, TokenStream
from tinyformer.model import Transformer
from tinyformer.tokenizer import build_tokenizer
from tinyformer.train import TrainConfig, train

GAP_TARGET = 0.05
ARCHS = {"gpt2": dict(arch="gpt2"), "llama": dict(arch="llama"), "llama-mqa": dict(arch="llama", n_kv_head=1)}


def loss_vs_floor(stream: TokenStream, name: str, steps: int | None) -> dict:
    cfg = TrainConfig.for_preset("nano", **({"steps": steps} if steps else {}))
    torch.manual_seed(cfg.seed)
    model = Transformer(ModelConfig.preset("nano", vocab_size=len(stream.tokenizer), **ARCHS[name]))
    result = train(model, stream, cfg, progress=False)
    # train() validates on stream.val_windows(context_len, eval_windows): the floor of those same windows.
    floor = stream.bayes_loss(stream.val_windows(cfg.context_len, cfg.eval_windows))
    gap = result.final_val_loss - floor
    return {
        "arch": name,
        "params": model.num_parameters(),
        "steps": cfg.steps,
        "val_loss": result.final_val_loss,
        "floor": floor,
        "gap": gap,
        "seconds": result.seconds,
        "ok": gap <= GAP_TARGET,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, help="training steps (default: nano's recipe)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    stream = TokenStream(Corpus(seed=0), build_tokenizer())
    print(f"{'arch':<10} {'params':>8} {'steps':>6} {'val loss':>9} {'floor':>7} {'gap':>7} {'seconds':>8}  ok")
    missed = []
    for name in ARCHS:
        r = loss_vs_floor(stream, name, args.steps)
        missed += [] if r["ok"] else [name]
        print(
            f"{r['arch']:<10} {r['params']:>8,} {r['steps']:>6} {r['val_loss']:>9.4f} {r['floor']:>7.4f} "
            f"{r['gap']:>7.4f} {r['seconds']:>8.1f}  {'yes' if r['ok'] else 'NO'}",
            flush=True,
        )
    print(f"target (every arch within 0.05 nats of the floor): {'MISSED by ' + ', '.join(missed) if missed else 'met'}")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
