"""An nbgrader course directory for the lessons: ``tinyformer workshop nbgrader-course DIR``.

One assignment per lesson (an instructor releases them block by block through the day), named after the
notebook: ``DIR/source/02_self_attention/02_self_attention.ipynb``. The source notebooks carry nbgrader's
metadata (nbgrader_meta.py). ``DIR/nbgrader_config.py`` holds this suite's settings (the exercise stub, cell
time limit, where the autograder's kernels find the trained model); nbgrader itself does the rest:

    cd DIR
    nbgrader generate_assignment --assignment='*'     # release/<lesson>/<lesson>.ipynb, the student versions
    nbgrader autograde 02_self_attention                # runs submitted/<student>/02_self_attention/*.ipynb
    nbgrader generate_feedback 02_self_attention        # feedback/<student>/02_self_attention/*.html

The course folder holds the solutions (source/) and the gradebook: it is made owner-only (0700) when created,
new source notebooks 0600, and the config sets umask 077 for everything nbgrader writes there. Autograding
runs learners' code; the config points its kernels at a scratch copy of the class's artifacts
(:func:`grading_artifacts`), so a lesson that saves a model (lesson 04 writes nano.pt) cannot replace the one
the class serves.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import nbformat

from tinyformer.paths import artifacts_dir, atomic_file
from tinyformer.workshop.nbgrader_meta import BEGIN, END, mark_file, notebook_text
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
# The solutions, submissions and gradebook here are the instructor's alone: nothing nbgrader writes is
# readable by others on a shared machine (nbgrader's exchange sets its own permissions on what it releases).
os.umask(0o077)
# Lessons 05-13 load the model trained once by the instructor (docs/workshop.md, "The day before"). The
# grading kernels get a scratch copy of it, removed when nbgrader exits: lesson 04 saves nano.pt and later
# lessons export nano-hf, and a learner's code must not replace what the class serves.
from tinyformer.workshop.nbgrader_course import grading_artifacts  # noqa: E402

os.environ["TINYFORMER_ARTIFACTS"] = grading_artifacts(os.environ.get("TINYFORMER_ARTIFACTS") or {artifacts!r})
'''
MANIFEST_NAME = ".tinyformer-course.json"  # what write_course last wrote to source/: {path: sha256}
PRIVATE_FOLDER, PRIVATE_FILE = 0o700, 0o600  # solutions and gradebook: the instructor's account only


def write_course(
    course_dir: str | Path, source_dir: str | Path, course_id: str = "tinyformer", *, discard_edits: bool = False
) -> list[Path]:
    """Put every lesson of ``source_dir`` under ``course_dir/source/<lesson>/`` (marked, atomically) and write
    ``course_dir/nbgrader_config.py`` unless one is there (an instructor's edits are kept).

    Every lesson is marked before anything is written, so a bad exercise cell writes nothing. Re-running
    refreshes source/ from ``source_dir``, but a source notebook edited since this function wrote it is only
    replaced with ``discard_edits=True``. Returns the source notebooks written."""
    course_dir, source_dir = Path(course_dir), Path(source_dir)
    notebooks = sorted(source_dir.glob("*.ipynb"))
    if not notebooks:
        raise FileNotFoundError(f"{source_dir} holds no .ipynb files; pass the folder that holds the lessons.")
    if course_dir.resolve() == source_dir.resolve() or source_dir.resolve() in course_dir.resolve().parents:
        raise ValueError(
            f"the course folder {course_dir} is inside the lessons' folder {source_dir}: nbgrader would write "
            "its release/, submitted/ and gradebook there. Choose a folder outside it, e.g. artifacts/course."
        )
    texts = {course_dir / "source" / path.stem / path.name: notebook_text(mark_file(path)[1]) for path in notebooks}
    written_before = _read_manifest(course_dir)
    if not discard_edits:
        _refuse_to_drop_edits(course_dir, texts, written_before)
    _make_private_folder(course_dir)
    _make_private_folder(course_dir / "source")
    for target, text in texts.items():
        _make_private_folder(target.parent)
        new = not target.exists()
        with atomic_file(target) as tmp:
            tmp.write_text(text, encoding="utf-8")
        if new:
            target.chmod(PRIVATE_FILE)  # a copy with the solutions; an existing one keeps the mode its owner set
    manifest = {**written_before, **{_key(course_dir, t): _digest(text) for t, text in texts.items()}}
    with atomic_file(course_dir / MANIFEST_NAME) as tmp:
        tmp.write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    config = course_dir / CONFIG_NAME
    if not config.exists():
        with atomic_file(config) as tmp:
            tmp.write_text(course_config(course_id), encoding="utf-8")
    return list(texts)


def _refuse_to_drop_edits(course_dir: Path, texts: dict[Path, str], written_before: dict[str, str]) -> None:
    """Raise naming every source notebook that differs both from what write_course last wrote there and from
    what it would write now: an instructor's edit (or a course from before the record was kept)."""
    edited = []
    for target, text in texts.items():
        if not target.exists():
            continue
        now = _digest(target.read_text(encoding="utf-8"))
        if now not in (written_before.get(_key(course_dir, target)), _digest(text)):
            edited.append(str(target))
    if edited:
        raise FileExistsError(
            f"{len(edited)} source notebook(s) changed since `nbgrader-course` wrote them: {', '.join(edited)}. "
            "Refreshing would lose those edits: copy them into the lessons' notebooks first, or add "
            "--discard-edits to replace them."
        )


def _make_private_folder(folder: Path) -> None:
    """``folder`` (made if missing) with no access for others; a folder that exists keeps its mode."""
    if not folder.exists():
        folder.mkdir(parents=True, mode=PRIVATE_FOLDER)
        folder.chmod(PRIVATE_FOLDER)  # mkdir's mode is masked by the umask; say exactly what we mean


def _read_manifest(course_dir: Path) -> dict[str, str]:
    path = course_dir / MANIFEST_NAME
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def _key(course_dir: Path, target: Path) -> str:
    return target.relative_to(course_dir).as_posix()


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def grading_artifacts(class_artifacts: str | Path) -> str:
    """A new scratch folder holding a copy of ``class_artifacts`` (the trained model the lessons load), removed
    when this process exits; what the course's nbgrader_config.py gives the grading kernels as their artifacts.

    Autograding runs each learner's notebook with the grader's rights, and lessons write to their artifacts
    folder (lesson 04 saves nano.pt, later lessons export nano-hf): in a copy, nothing a submission does reaches
    the files the class's server serves and new learners are seeded from."""
    scratch = Path(tempfile.mkdtemp(prefix="tinyformer-grading-"))
    atexit.register(shutil.rmtree, scratch, ignore_errors=True)
    if Path(class_artifacts).is_dir():
        # vLLM's server logs are no lesson's input, and the class's logs may name its API key's file
        shutil.copytree(class_artifacts, scratch, dirs_exist_ok=True, ignore=shutil.ignore_patterns("logs"))
    return str(scratch)


def grades_in_class_artifacts(course_dir: str | Path) -> bool:
    """True when the course's nbgrader_config.py predates :func:`grading_artifacts`: its grading kernels write
    into the class's own artifacts folder. (Kept, like every existing config; the command says how to fix it.)"""
    config = Path(course_dir) / CONFIG_NAME
    return config.is_file() and "grading_artifacts(" not in config.read_text(encoding="utf-8")


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
