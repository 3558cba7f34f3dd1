"""An nbgrader course directory for the lessons: ``tinyformer workshop nbgrader-course DIR``.

One assignment per lesson (an instructor releases them block by block through the day), named after the
notebook: ``DIR/source/02_self_attention/02_self_attention.ipynb``. The source notebooks carry nbgrader's
metadata (nbgrader_meta.py). ``DIR/nbgrader_config.py`` holds this suite's settings (the exercise stub, cell
time limit, where the autograder's kernels find the trained model); nbgrader itself does the rest:

    cd DIR
    nbgrader generate_assignment --assignment='*'     # release/<lesson>/<lesson>.ipynb, the student versions
    nbgrader autograde 02_self_attention                # runs submitted/<student>/02_self_attention/*.ipynb
    nbgrader generate_feedback 02_self_attention        # feedback/<student>/02_self_attention/*.html
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import nbformat

from tinyformer.paths import artifacts_dir, atomic_file
from tinyformer.workshop.nbgrader_meta import BEGIN, END, mark_notebook, write_notebook_atomically
from tinyformer.workshop.student import STUB_BODY

CONFIG_NAME = "nbgrader_config.py"
CELL_TIMEOUT_S = 600  # lesson 04 trains for about a minute in one cell; 07-13 start vLLM servers

CONFIG_TEMPLATE = '''\
"""nbgrader settings for the tinyformer lessons (written by `tinyformer workshop nbgrader-course`).

Run nbgrader from this folder, in the Python environment where tinyformer is installed: the kernels that
`nbgrader autograde` starts import tinyformer from it.
"""

import os

c = get_config()  # noqa: F821 (nbgrader provides it)
c.CourseDirectory.root = os.path.dirname(os.path.abspath(__file__))
c.CourseDirectory.course_id = {course_id!r}
# The stub that replaces each exercise's body: the same as `make student` writes.
c.ClearSolutions.code_stub = {{"python": {stub!r}}}
# Seconds one cell may run while autograding (nbgrader's default, 30 s, is shorter than lesson 04's training).
c.Execute.timeout = {timeout}
# Lessons 05-13 load the model trained once by the instructor (docs/workshop.md, "The day before").
os.environ.setdefault("TINYFORMER_ARTIFACTS", {artifacts!r})
'''


def write_course(course_dir: str | Path, source_dir: str | Path, course_id: str = "tinyformer") -> list[Path]:
    """Put every lesson of ``source_dir`` under ``course_dir/source/<lesson>/`` (marked, atomically) and write
    ``course_dir/nbgrader_config.py`` unless one is there (an instructor's edits are kept).

    Returns the source notebooks written. Re-running refreshes them from ``source_dir``."""
    course_dir, source_dir = Path(course_dir), Path(source_dir)
    notebooks = sorted(source_dir.glob("*.ipynb"))
    if not notebooks:
        raise FileNotFoundError(f"{source_dir} holds no .ipynb files; pass the folder that holds the lessons.")
    if course_dir.resolve() == source_dir.resolve() or source_dir.resolve() in course_dir.resolve().parents:
        raise ValueError(
            f"the course folder {course_dir} is inside the lessons' folder {source_dir}: nbgrader would write "
            "its release/, submitted/ and gradebook there. Choose a folder outside it, e.g. artifacts/course."
        )
    written = []
    for path in notebooks:
        target = course_dir / "source" / path.stem / path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        write_notebook_atomically(mark_notebook(nbformat.read(path, as_version=4)), target)
        written.append(target)
    config = course_dir / CONFIG_NAME
    if not config.exists():
        with atomic_file(config) as tmp:
            tmp.write_text(course_config(course_id), encoding="utf-8")
    return written


def course_config(course_id: str) -> str:
    """The text of a course's nbgrader_config.py."""
    return CONFIG_TEMPLATE.format(
        course_id=course_id, stub=STUB_BODY, timeout=CELL_TIMEOUT_S, artifacts=str(artifacts_dir().resolve())
    )


def nbgrader_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment to run the ``nbgrader`` command in: this Python's scripts first on PATH (nbgrader runs
    ``alembic`` from PATH when it creates the gradebook; outside an activated venv that fails with
    "No such file or directory: 'alembic'")."""
    env = {**os.environ, **(extra or {})}
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


def run_nbgrader(course_dir: str | Path, *args: str, extra_env: dict[str, str] | None = None, timeout: float = 900):
    """``nbgrader ARGS`` in ``course_dir`` (where it reads nbgrader_config.py); raises with nbgrader's log on
    failure. Returns the finished process."""
    result = subprocess.run(
        [sys.executable, "-m", "nbgrader", *args],
        cwd=course_dir,
        env=nbgrader_env(extra_env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if result.returncode != 0 or "ERROR]" in result.stderr:  # nbgrader logs a failed notebook and may exit 0
        raise RuntimeError(f"nbgrader {' '.join(args)} failed in {course_dir}:\n{result.stderr[-4000:]}")
    return result


def scores(course_dir: str | Path, assignment: str, course_id: str = "tinyformer") -> dict[str, dict[str, float]]:
    """{student: {grade id: points}} of the autograded submissions of ``assignment``, from the gradebook."""
    from nbgrader.api import Gradebook

    with Gradebook(f"sqlite:///{Path(course_dir).resolve() / 'gradebook.db'}", course_id) as gradebook:
        found = {}
        for submission in gradebook.assignment_submissions(assignment):
            grades = [grade for notebook in submission.notebooks for grade in notebook.grades]
            found[submission.student_id] = {grade.name: grade.score for grade in grades}
    return found


def learner_copy(
    release: nbformat.NotebookNode, instructor: nbformat.NotebookNode, answers: dict[str, list[str] | None]
) -> nbformat.NotebookNode:
    """What a learner hands in, for dry runs and tests: the released notebook with the exercise of each
    function named in ``answers`` filled in by those lines (indented as in the body), or by the instructor's
    own answer where the value is None. Exercises not named stay the stub nbgrader released."""
    copy = nbformat.from_dict(release)
    for cell, source in zip(copy.cells, instructor.cells, strict=True):
        if not source.metadata.get("nbgrader", {}).get("solution"):
            continue
        name = next((n for n in answers if f"def {n}(" in source.source), None)
        if name is None:
            continue
        lines, source_lines = cell.source.splitlines(), source.source.splitlines()
        answer = answers[name]
        if answer is None:  # the lines between the instructor's markers
            begin = next(i for i, line in enumerate(source_lines) if line.strip() == BEGIN)
            answer = source_lines[begin + 1 : source_lines.index(source_lines[begin].replace(BEGIN, END))]
        at = next(i for i, line in enumerate(lines) if line.strip() == STUB_BODY)
        cell.source = "\n".join([*lines[:at], *answer, *lines[at + 1 :]])
    return copy
