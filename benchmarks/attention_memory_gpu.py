"""Peak memory and time of naive vs fused attention on an NVIDIA GPU, for n = 512 ... 65536 tokens.

Writes the reference file notebook 06 plots (labelled with the GPU and the date):

    python benchmarks/attention_memory_gpu.py                 # -> src/tinyformer/reference/attention_gpu.json
    python benchmarks/attention_memory_gpu.py --out other.json

Naive attention (tinyformer.memory.naive_attention) holds the whole [B, heads, n, n] score matrix, so its
peak grows as n^2 until the GPU runs out of memory; F.scaled_dot_product_attention (FlashAttention on
recent GPUs) works block by block and grows as n. Peak bytes come from torch.cuda.max_memory_allocated
(inputs allocated beforehand, so not counted); times are the median of CUDA-event-timed repeats after a
warm-up.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

import torch

from tinyformer import memory

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "src" / "tinyformer" / "reference" / "attention_gpu.json"
BATCH, HEADS, HEAD_DIM, DTYPE = 1, 16, 64, "fp16"


def time_ms(fn, q, k, v, repeats: int = 10) -> float:
    """Median milliseconds of ``fn(q, k, v)``, timed with CUDA events after two warm-up calls."""
    for _ in range(2):
        fn(q, k, v)
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn(q, k, v)
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def measure(impl: str, n: int) -> dict:
    fn = memory.ATTENTION_IMPLEMENTATIONS[impl]
    row = {"impl": impl, "n": n, "peak_bytes": None, "output_bytes": None, "ms": None, "error": None}
    try:
        q, k, v = memory.attention_inputs(BATCH, HEADS, n, HEAD_DIM, DTYPE, "cuda")
        with torch.inference_mode():
            measured, out = memory.peak_bytes(fn, q, k, v, device="cuda")
            del out
            row.update(peak_bytes=measured.peak_bytes, output_bytes=measured.retained_bytes)
            row["ms"] = round(time_ms(fn, q, k, v), 4)
    except torch.OutOfMemoryError as err:
        row["error"] = f"CUDA out of memory ({str(err).splitlines()[0][:120]})"
    finally:
        q = k = v = None
        torch.cuda.empty_cache()
    return row


def check_naive_against_formula(rows: list[dict]) -> None:
    """The naive peak minus its output is the score matrix: within 2% of the formula, or the script fails."""
    for row in rows:
        if row["impl"] == "naive" and row["peak_bytes"] is not None:
            formula = memory.attention_scores_bytes(row["n"], HEADS, BATCH, DTYPE)
            scores = row["peak_bytes"] - row["output_bytes"]
            if abs(scores - formula) > 0.02 * formula:
                sys.exit(f"n={row['n']}: measured score matrix {scores:,} B vs formula {formula:,} B (> 2% apart)")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--max-n", type=int, default=65536)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        sys.exit("no CUDA GPU visible: this benchmark measures on an NVIDIA GPU (notebook 06 measures on CPU).")

    torch.manual_seed(0)
    props = torch.cuda.get_device_properties(0)
    # One small call of each first: cuBLAS allocates its workspace (32 MiB) on the first matmul and keeps it,
    # which would otherwise show up in the first measured peak.
    for impl in ("naive", "fused"):
        measure(impl, 256)
    sizes = [n for n in (512, 1024, 2048, 4096, 8192, 16384, 32768, 65536) if n <= args.max_n]
    rows = [measure(impl, n) for n in sizes for impl in ("naive", "fused")]
    check_naive_against_formula(rows)
    result = {
        "gpu": torch.cuda.get_device_name(0),
        "gpu_memory_bytes": torch.cuda.mem_get_info()[1],
        "compute_capability": f"{props.major}.{props.minor}",
        "date": dt.date.today().isoformat(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "shape": {"batch": BATCH, "heads": HEADS, "head_dim": HEAD_DIM, "dtype": DTYPE},
        "method": "peak = torch.cuda.max_memory_allocated during one call, inputs and cuBLAS workspace excluded; "
        "ms = median of 10 CUDA-event-timed calls after 2 warm-ups; non-causal",
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=args.out.parent, suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(result, f, indent=1)
        f.write("\n")
    os.replace(tmp, args.out)  # atomic: a reader never sees half a file

    print(f"{result['gpu']}, {result['date']}, torch {result['torch']}, B={BATCH} heads={HEADS} hd={HEAD_DIM} {DTYPE}")
    print(f"{'n':>6} {'scores (formula)':>17} {'naive peak':>12} {'fused peak':>12} {'naive ms':>9} {'fused ms':>9}")
    by_key = {(r["impl"], r["n"]): r for r in rows}
    for n in sizes:
        naive, fused = by_key["naive", n], by_key["fused", n]

        scores = memory.format_bytes(memory.attention_scores_bytes(n, HEADS, BATCH, DTYPE))
        peaks = [("OOM" if r["error"] else memory.format_bytes(r["peak_bytes"])) for r in (naive, fused)]
        times = [("OOM" if r["error"] else f"{r['ms']:.3f}") for r in (naive, fused)]
        print(f"{n:>6} {scores:>17} {peaks[0]:>12} {peaks[1]:>12} {times[0]:>9} {times[1]:>9}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
