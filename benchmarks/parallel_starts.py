"""Two vLLM starts one after the other against the same two side by side (VLLMServer.start_in_background).

    python benchmarks/parallel_starts.py [--rounds 2]

Lessons 08-11 start their next server in the background while they use the current one. A start on this box is
nearly all Python imports, one process after another (API server, engine, worker), each on one core; the table
shows what two starts side by side save on the machine it runs on. The order alternates from round to round (use
an even --rounds), so a busy moment on a shared box hits both columns alike; the ratio is the figure, the seconds
are context.
"""

from __future__ import annotations

import argparse
import time

from tinyformer.serving import VLLMServer
from tinyformer.serving.prepare import lesson_export


def two_in_a_row(export_dir) -> float:
    servers = [VLLMServer(export_dir, progress=False, shared=False) for _ in range(2)]
    start = time.perf_counter()
    for server in servers:
        server.start()
    seconds = time.perf_counter() - start
    for server in servers:
        server.stop()
    return seconds


def two_side_by_side(export_dir) -> float:
    first, second = (VLLMServer(export_dir, progress=False, shared=False) for _ in range(2))
    start = time.perf_counter()
    in_background = first.start_in_background()
    second.start()
    in_background.result()
    seconds = time.perf_counter() - start
    first.stop()
    second.stop()
    return seconds


def both_orders(round_number: int, export_dir) -> tuple[float, float]:
    """(in a row, side by side) seconds; odd rounds start in a row first, even rounds side by side first, so a
    box that warms up (page cache, CPU frequency) or gets busier favours neither column."""
    if round_number % 2:
        in_a_row = two_in_a_row(export_dir)
        return in_a_row, two_side_by_side(export_dir)
    side_by_side = two_side_by_side(export_dir)
    return two_in_a_row(export_dir), side_by_side


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    if args.rounds < 1:
        raise ValueError(f"--rounds must be at least 1, not {args.rounds}.")
    _, _, export_dir = lesson_export("nano", progress=False)
    print(f"{'round':>5} {'in a row s':>11} {'side by side s':>15} {'ratio':>6}")
    for round_number in range(1, args.rounds + 1):
        in_a_row, side_by_side = both_orders(round_number, export_dir)
        print(f"{round_number:>5} {in_a_row:>11.1f} {side_by_side:>15.1f} {side_by_side / in_a_row:>6.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
