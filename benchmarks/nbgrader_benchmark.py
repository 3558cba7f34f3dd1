"""nbgrader on the lessons, timed on this machine: the issue's targets.

    python benchmarks/nbgrader_benchmark.py [--lessons 02_self_attention 03_block_and_lm_head]

In a temporary course folder (`tinyformer workshop nbgrader-course`), with the `nbgrader` command as an
instructor runs it (a fresh process each time, its start-up included):
  * `nbgrader generate_assignment --assignment='*'`: every lesson's student version (target <= 30 s),
    beside `make student`'s in-process build of the same copies;
  * `nbgrader autograde LESSON --student=NAME` for one submission at a time, for each fast lesson: the
    instructor's notebook (full marks expected) and a copy with one typical wrong answer (partial marks),
    target <= 60 s each; then `nbgrader generate_feedback` for the lesson;
  * beside them, the same lesson run top to bottom by nbclient without nbgrader (kernel start included):
    autograde's own overhead is the difference. The load average is printed too: on a shared box the
    absolute times move with it, the differences much less.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

from tinyformer.workshop.nbgrader_course import learner_copy, run_nbgrader, scores, write_course
from tinyformer.workshop.student import timed_build

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = REPO / "notebooks"
GENERATE_TARGET_S, AUTOGRADE_TARGET_S = 30.0, 60.0

# One typical slip per fast lesson; every other exercise gets the instructor's answer.
WRONG = {
    "02_self_attention": {"causal_mask": ["    return torch.triu(torch.ones(T, T, dtype=torch.bool))"]},
    "03_block_and_lm_head": {  # pre-LN forgotten: attention and MLP see x itself, not its layer norm
        "block_forward": ["    x = x + block.attn(x, mask)[0]", "    return x + block.mlp(x)"]
    },
}


def timed(course: Path, *args: str) -> float:
    start = time.perf_counter()
    run_nbgrader(course, *args, extra_env={"PYTHONPATH": str(REPO / "src")})
    return time.perf_counter() - start


def submit(course: Path, lesson: str, student: str, notebook: nbformat.NotebookNode) -> None:
    folder = course / "submitted" / student / lesson
    folder.mkdir(parents=True)
    nbformat.write(notebook, folder / f"{lesson}.ipynb")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lessons", nargs="+", default=list(WRONG), choices=list(WRONG))
    args = parser.parse_args()
    print("load average (1, 5, 15 min) at the start: " + ", ".join(f"{x:.1f}" for x in os.getloadavg()))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        course = Path(tmp) / "course"
        lessons = write_course(course, NOTEBOOKS)
        seconds = timed(course, "generate_assignment", "--assignment=*")
        released = len(list((course / "release").glob("*/*.ipynb")))
        rows.append((f"generate_assignment, all {released} lessons", "", seconds, GENERATE_TARGET_S))
        _, build_s = timed_build(NOTEBOOKS, Path(tmp) / "student")
        rows.append((f"make student (in process), {len(lessons)} notebooks", "", build_s, None))
        for lesson in args.lessons:
            release = nbformat.read(course / "release" / lesson / f"{lesson}.ipynb", as_version=4)
            instructor = nbformat.read(course / "source" / lesson / f"{lesson}.ipynb", as_version=4)
            exercises = [c for c in instructor.cells if c.metadata.get("nbgrader", {}).get("solution")]
            everything = {name: None for c in exercises for name in _functions(c.source)}
            submit(course, lesson, "instructor", instructor)
            submit(course, lesson, "wrong", learner_copy(release, instructor, {**everything, **WRONG[lesson]}))
            start = time.perf_counter()
            NotebookClient(instructor, timeout=600, resources={"metadata": {"path": tmp}}).execute()
            rows.append((f"{lesson} run by nbclient alone (no nbgrader)", "", time.perf_counter() - start, None))
            for student in ("instructor", "wrong"):
                seconds = timed(course, "autograde", lesson, f"--student={student}")
                got = scores(course, lesson)[student]
                score = f"{sum(got.values()):g} / {len(got)}"
                rows.append((f"autograde {lesson}, {student} version", score, seconds, AUTOGRADE_TARGET_S))
            seconds = timed(course, "generate_feedback", lesson)
            rows.append((f"generate_feedback {lesson}, 2 submissions", "", seconds, None))
    print(_table(rows))
    print("load average (1, 5, 15 min) at the end: " + ", ".join(f"{x:.1f}" for x in os.getloadavg()))


def _functions(source: str) -> list[str]:
    return [line.split("(")[0][4:] for line in source.splitlines() if line.startswith("def ")]


def _table(rows) -> str:
    lines = ["| step | score | seconds | target |", "| --- | --- | --- | --- |"]
    for step, score, seconds, target in rows:
        verdict = "" if target is None else f"<= {target:.0f} s {'OK' if seconds <= target else 'MISSED'}"
        lines.append(f"| {step} | {score} | {seconds:.1f} | {verdict} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
