"""Workshop targets, measured on this machine.

    python benchmarks/workshop_benchmark.py [--learners 1 10 50] [--repeat 5] [--skip-server]

Prints two tables:
  * building a student copy of every notebook: seconds per full build (target < 5 s), exercises, leak check;
  * one shared vLLM server (sized like `tinyformer workshop serve` for the largest class) holding simulated classes
    of 1, 10 and 50 learners side by side, each learner running notebook 09's batching cell at the same moment:
    failed requests (target 0), learners whose tokens equal the requests sent alone, request latency p50/p95,
    the peak KV-cache usage and the scheduler's queue.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import nbformat

from tinyformer.workshop.classload import batching_cell, simulate_class
from tinyformer.workshop.classroom import class_server, plan_class
from tinyformer.workshop.student import find_leaks, timed_build

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
STUDENT_BUILD_TARGET_S = 5.0


def student_table(repeat: int) -> str:
    times = []
    with tempfile.TemporaryDirectory() as out:
        for _ in range(repeat):
            copies, seconds = timed_build(NOTEBOOKS, out)
            times.append(seconds)
        leaks = sum(
            len(find_leaks(nbformat.read(c.source, as_version=4), nbformat.read(c.target, as_version=4)))
            for c in copies
        )
    median = statistics.median(times)
    rows = [
        ("notebooks", f"{len(copies)}", ""),
        ("exercises (solution cells)", f"{sum(c.exercises for c in copies)}", ""),
        (f"full build, median of {repeat} (s)", f"{median:.2f}", f"< {STUDENT_BUILD_TARGET_S:.0f}  {_ok(median < 5)}"),
        ("full build, slowest (s)", f"{max(times):.2f}", ""),
        ("solution lines leaked", f"{leaks}", f"0  {_ok(leaks == 0)}"),
    ]
    return _table("student copies", rows)


def server_table(class_sizes: list[int]) -> str:
    from tinyformer.serving.prepare import lesson_export

    _, _, export_dir = lesson_export("nano", progress=False)  # the model lessons 07-09 serve
    plan = plan_class(export_dir, learners=max(class_sizes))
    plan.check()
    cell = batching_cell()
    reports = {}
    with class_server(plan, host="127.0.0.1", port=None, api_key="benchmark-key", progress=False) as server:
        print(f"server ready after {server.ready_seconds:.0f} s; {plan.summary()}")
        for learners in class_sizes:
            reports[learners] = simulate_class(server, cell, learners=learners)
    header = ("", *[f"{n} learner{'s' if n > 1 else ''}" for n in class_sizes], "target")
    rows = [
        ("requests", *[f"{r.requests:,}" for r in reports.values()], ""),
        ("failed requests", *[f"{r.failures}" for r in reports.values()], "0"),
        ("same tokens as sent alone", *[f"{r.learners_matching_solo}/{r.learners}" for r in reports.values()], "all"),
        ("request latency p50 (s)", *[f"{r.latency(50):.2f}" for r in reports.values()], ""),
        ("request latency p95 (s)", *[f"{r.latency(95):.2f}" for r in reports.values()], ""),
        ("slowest learner's cell (s)", *[f"{max(r.learner_seconds):.2f}" for r in reports.values()], ""),
        ("KV-cache usage peak", *[f"{100 * r.kv_usage_peak:.1f}%" for r in reports.values()], ""),
        ("requests running, peak", *[f"{r.running_peak:.0f}" for r in reports.values()], ""),
        ("requests waiting, peak", *[f"{r.waiting_peak:.0f}" for r in reports.values()], ""),
        ("preemptions", *[f"{r.preemptions:.0f}" for r in reports.values()], ""),
    ]
    cell_text = f"{len(cell.prompts)} prompts, concurrency {cell.concurrency}, {cell.max_tokens} tokens each"
    return _table(f"one shared server, every learner runs notebook 09's batching cell ({cell_text})", rows, header)


def _ok(good: bool) -> str:
    return "ok" if good else "MISSED"


def _table(title: str, rows: list[tuple], header: tuple | None = None) -> str:
    all_rows = [header, *rows] if header else rows
    widths = [max(len(str(row[i])) for row in all_rows) for i in range(len(all_rows[0]))]
    lines = [f"== {title}"]
    for row in all_rows:
        cells = [
            f"{cell:<{w}}" if i == 0 else f"{cell:>{w}}" for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(cells))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--learners", type=int, nargs="+", default=[1, 10, 50], help="class sizes to simulate")
    parser.add_argument("--repeat", type=int, default=5, help="student builds to time")
    parser.add_argument("--skip-server", action="store_true", help="only the student-copy table")
    args = parser.parse_args()
    print(student_table(args.repeat))
    if not args.skip_server:
        print()
        print(server_table(sorted(args.learners)))


if __name__ == "__main__":
    main()
