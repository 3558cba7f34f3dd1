"""nbgrader on the lessons: the metadata (pure, fast), then real nbgrader in a temporary course folder:
generate every lesson's assignment, autograde lesson 02 for three learners, write their feedback."""

from __future__ import annotations

import ast
import html
import os
import re
import shutil
import stat
from pathlib import Path

import nbformat
import pytest
from conftest import REPO
from nbgrader.nbgraderformat import MetadataValidator

from tinyformer import cli
from tinyformer.checks import check_causal_attention, check_causal_mask
from tinyformer.workshop.nbgrader_course import learner_copy, run_nbgrader, scores, write_course
from tinyformer.workshop.nbgrader_meta import BEGIN, END, mark_notebook, mark_notebooks, mark_solution_source
from tinyformer.workshop.student import (
    STUB_BODY,
    checker_calls,
    find_leaks,
    is_solution,
    student_notebook,
)

NOTEBOOKS = REPO / "notebooks"
FAST_LESSON = "02_self_attention"  # three exercises, no model to train, no vLLM: about 6 s to run

SOLUTION = '''# Exercise: the causal mask.
def causal_mask(T):
    """Lower triangle, diagonal included."""
    # every pair first
    allowed = torch.ones(T, T, dtype=torch.bool)
    return torch.tril(allowed)'''


def lesson(*cells) -> nbformat.NotebookNode:
    notebook = nbformat.v4.new_notebook(cells=list(cells))
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    return notebook


def synthetic_lesson() -> nbformat.NotebookNode:
    return lesson(
        nbformat.v4.new_markdown_cell("# A tiny lesson"),
        nbformat.v4.new_code_cell("import torch\n\nfrom tinyformer.checks import check_causal_mask"),
        nbformat.v4.new_code_cell(SOLUTION, metadata={"tags": ["solution"]}),
        nbformat.v4.new_code_cell("assert check_causal_mask(causal_mask)"),
        nbformat.v4.new_code_cell("print(causal_mask(3))"),
    )


# ----- the metadata -------------------------------------------------------------------------------


def test_markers_go_around_the_body_after_the_docstring():
    marked = mark_solution_source(SOLUTION)
    assert marked.splitlines() == [
        *SOLUTION.splitlines()[:3],
        "    " + BEGIN,
        *SOLUTION.splitlines()[3:],
        "    " + END,
    ]
    assert ast.dump(ast.parse(marked)) == ast.dump(ast.parse(SOLUTION)), "the markers must be comments only"
    assert mark_solution_source(marked) == marked


def test_markers_for_several_functions_decorators_and_no_docstring():
    source = "# two parts\n@staticmethod\ndef a(x):\n    # hint\n    return x + 1\n\n\ndef b(y):\n    return y * 2"
    assert mark_solution_source(source).splitlines() == [
        "# two parts",
        "@staticmethod",
        "def a(x):",
        "    " + BEGIN,
        "    # hint",
        "    return x + 1",
        "    " + END,
        "",
        "",
        "def b(y):",
        "    " + BEGIN,
        "    return y * 2",
        "    " + END,
    ]


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("# prompt\nsteps = 3\ndef f(x):\n    return x", r"line 2 is `steps = 3`: move that statement"),
        ("def f(x): return x", r"on its `def` line"),
        ('def f(x):\n    """Only a docstring."""', r"only a docstring"),
        ("# nothing to do", r"defines none"),
        (f"def f(x):\n    {BEGIN}\n    return x", r"has no"),
        (f"def f(x):\n    {END}\n    return x", r"unbalanced"),
    ],
)
def test_cells_nbgrader_cannot_stub_are_refused_with_a_reason(source, message):
    with pytest.raises(ValueError, match=message):
        mark_solution_source(source)


def test_notebook_metadata_by_kind_of_cell():
    marked = mark_notebook(synthetic_lesson())
    prose, setup, solution, check, later = (cell.metadata.get("nbgrader") for cell in marked.cells)
    common = {"schema_version": 3, "task": False}
    assert prose == {**common, "grade": False, "solution": False, "locked": True, "grade_id": "prose-1"}
    assert setup is None and later is None  # the lesson's own code stays editable
    assert solution == {**common, "grade": False, "solution": True, "locked": False, "grade_id": "causal_mask"}
    assert check == {
        **common,
        **{"grade": True, "solution": False, "locked": True, "points": 1, "grade_id": "check_causal_mask"},
    }
    MetadataValidator().validate_nb(marked)  # nbgrader's own rules (ids, points, markdown cells)
    assert mark_notebook(marked) == marked, "marking twice changes nothing"


def test_marking_keeps_the_instructors_points_and_ids_and_renames_a_copied_cell():
    marked = mark_notebook(synthetic_lesson())
    marked.cells[3].metadata["nbgrader"]["points"] = 5
    marked.cells[0].metadata["nbgrader"]["grade_id"] = "title"
    marked.cells.insert(1, nbformat.from_dict(marked.cells[0]))  # a copied cell carries its grade id along
    again = mark_notebook(marked)
    ids = [cell.metadata["nbgrader"]["grade_id"] for cell in again.cells if "nbgrader" in cell.metadata]
    assert ids == ["title", "prose-1", "causal_mask", "check_causal_mask"]
    assert again.cells[4].metadata["nbgrader"]["points"] == 5
    MetadataValidator().validate_nb(again)


def test_a_cell_that_stops_being_a_check_loses_its_grading():
    marked = mark_notebook(synthetic_lesson())
    marked.cells[3].source = "print('no check here')"
    assert "nbgrader" not in mark_notebook(marked).cells[3].metadata


def test_a_markdown_solution_is_refused():
    notebook = lesson(nbformat.v4.new_markdown_cell("Why?\n\nBecause.", metadata={"tags": ["solution"]}))
    with pytest.raises(ValueError, match="markdown cell tagged `solution`"):
        mark_notebook(notebook)


def test_the_committed_notebooks_carry_nbgrader_metadata_up_to_date():
    assert mark_notebooks(NOTEBOOKS, check=True) == [], "run `tinyformer workshop nbgrader-metadata`"
    for path in sorted(NOTEBOOKS.glob("*.ipynb")):
        notebook = nbformat.read(path, as_version=4)
        MetadataValidator().validate_nb(notebook)
        solutions = [c for c in notebook.cells if c.metadata.get("nbgrader", {}).get("solution")]
        tests = [c for c in notebook.cells if c.metadata.get("nbgrader", {}).get("grade")]
        assert solutions == [c for c in notebook.cells if is_solution(c)], path.name
        assert len(tests) == len(checker_calls(notebook)), path.name  # every checker call is graded
        for cell in solutions:  # nothing but comments added: the instructor notebook runs as before
            unmarked = "\n".join(line for line in cell.source.splitlines() if line.strip() not in (BEGIN, END))
            assert ast.dump(ast.parse(cell.source)) == ast.dump(ast.parse(unmarked)), path.name
            assert "checksum" not in cell.metadata["nbgrader"], "checksums are nbgrader's to compute on release"


def test_the_command_line_reports_and_fixes_an_out_of_date_notebook(tmp_path, capsys):
    nbformat.write(synthetic_lesson(), tmp_path / "01_tiny.ipynb")
    command = ["workshop", "nbgrader-metadata", "--source", str(tmp_path)]
    assert cli.main([*command, "--check"]) == 1
    assert "01_tiny.ipynb: out of date" in capsys.readouterr().out
    assert cli.main(command) == 0
    assert "1 notebook changed" in capsys.readouterr().out
    assert cli.main([*command, "--check"]) == 0


def test_the_course_command_writes_one_assignment_per_lesson_and_keeps_an_edited_config(tmp_path, capsys):
    lessons = tmp_path / "notebooks"
    lessons.mkdir()
    nbformat.write(synthetic_lesson(), lessons / "01_tiny.ipynb")
    course = tmp_path / "course"
    assert cli.main(["workshop", "nbgrader-course", str(course), "--source", str(lessons)]) == 0
    assert "1 assignments under" in capsys.readouterr().out
    source = nbformat.read(course / "source" / "01_tiny" / "01_tiny.ipynb", as_version=4)
    assert source == mark_notebook(nbformat.read(lessons / "01_tiny.ipynb", as_version=4))
    config = (course / "nbgrader_config.py").read_text()
    assert repr(STUB_BODY) in config and "c.Execute.timeout = 600" in config
    (course / "nbgrader_config.py").write_text(config + "c.Execute.timeout = 60\n")
    assert cli.main(["workshop", "nbgrader-course", str(course), "--source", str(lessons)]) == 0
    assert (course / "nbgrader_config.py").read_text().endswith("c.Execute.timeout = 60\n")
    assert cli.main(["workshop", "nbgrader-course", str(lessons / "course"), "--source", str(lessons)]) == 1
    assert "inside the lessons' folder" in capsys.readouterr().err


def test_course_solutions_and_gradebook_are_not_readable_by_others(tmp_path, monkeypatch):
    lessons = tmp_path / "notebooks"
    lessons.mkdir()
    nbformat.write(synthetic_lesson(), lessons / "01_tiny.ipynb")
    previous = os.umask(0o022)  # the usual umask, under which new files are world-readable
    try:
        (target,) = write_course(tmp_path / "course", lessons)
    finally:
        os.umask(previous)
    assert BEGIN in target.read_text()
    folders = [tmp_path / "course", tmp_path / "course" / "source", target.parent]
    assert [stat.S_IMODE(path.stat().st_mode) for path in [*folders, target]] == [0o700, 0o700, 0o700, 0o600]
    assert "os.umask(0o077)" in (tmp_path / "course" / "nbgrader_config.py").read_text()  # gradebook, submissions


def test_a_rerun_never_drops_the_instructors_edits_without_the_flag(tmp_path, capsys):
    lessons = tmp_path / "notebooks"
    lessons.mkdir()
    nbformat.write(synthetic_lesson(), lessons / "01_tiny.ipynb")
    nbformat.write(synthetic_lesson(), lessons / "02_tiny.ipynb")
    course = tmp_path / "course"
    command = ["workshop", "nbgrader-course", str(course), "--source", str(lessons)]
    assert cli.main(command) == 0
    edited = course / "source" / "02_tiny" / "02_tiny.ipynb"
    notebook = nbformat.read(edited, as_version=4)
    notebook.cells[0].source = "# A tiny lesson, reworded by the instructor"
    nbformat.write(notebook, edited)
    mine = edited.read_bytes()
    (lessons / "01_tiny.ipynb").write_text((lessons / "01_tiny.ipynb").read_text().replace("tiny", "small"))
    untouched = (course / "source" / "01_tiny" / "01_tiny.ipynb").read_bytes()
    capsys.readouterr()

    assert cli.main(command) == 1
    err = capsys.readouterr().err
    assert f"1 source notebook(s) changed since `nbgrader-course` wrote them: {edited}." in err
    assert "--discard-edits" in err and "01_tiny" not in err
    assert edited.read_bytes() == mine  # nothing written: the edit, and the other lesson's old copy, both stay
    assert (course / "source" / "01_tiny" / "01_tiny.ipynb").read_bytes() == untouched

    assert cli.main([*command, "--discard-edits"]) == 0
    assert "reworded" not in edited.read_text()
    assert "small" in (course / "source" / "01_tiny" / "01_tiny.ipynb").read_text()
    assert cli.main(command) == 0  # what it wrote itself is refreshed without asking


def test_a_course_config_that_grades_in_the_class_artifacts_is_pointed_out(tmp_path, capsys):
    lessons = tmp_path / "notebooks"
    lessons.mkdir()
    nbformat.write(synthetic_lesson(), lessons / "01_tiny.ipynb")
    course = tmp_path / "course"
    command = ["workshop", "nbgrader-course", str(course), "--source", str(lessons)]
    assert cli.main(command) == 0 and "warning" not in capsys.readouterr().err
    old = 'os.environ.setdefault("TINYFORMER_ARTIFACTS", "/srv/class/artifacts")\n'  # what earlier versions wrote
    config = course / "nbgrader_config.py"
    config.write_text(config.read_text().split("# Lessons 05-13")[0] + old)
    assert cli.main(command) == 0
    assert "predates grading in a scratch copy: autograding would write into the class's artifacts" in (
        capsys.readouterr().err
    )
    assert config.read_text().endswith(old)  # kept: it is the instructor's file


def test_a_syntax_error_in_an_exercise_names_the_notebook_and_cell_and_writes_nothing(tmp_path, capsys):
    lessons = tmp_path / "notebooks"
    lessons.mkdir()
    nbformat.write(synthetic_lesson(), lessons / "01_tiny.ipynb")
    broken = synthetic_lesson()
    broken.cells[2].source = SOLUTION.replace("return torch.tril(allowed)", "return torch.tril(allowed")
    nbformat.write(broken, lessons / "02_broken.ipynb")
    course = tmp_path / "course"
    assert cli.main(["workshop", "nbgrader-course", str(course), "--source", str(lessons)]) == 1
    err = capsys.readouterr().err
    assert f"{lessons / '02_broken.ipynb'}: cell 2 (an exercise) is not valid Python: '(' was never closed" in err
    assert "Traceback" not in err and not course.exists()
    unmarked = (lessons / "01_tiny.ipynb").read_bytes()
    assert cli.main(["workshop", "nbgrader-metadata", "--source", str(lessons)]) == 1
    assert "02_broken.ipynb: cell 2 (an exercise) is not valid Python" in capsys.readouterr().err
    assert (lessons / "01_tiny.ipynb").read_bytes() == unmarked  # the good lesson was not marked either


# ----- real nbgrader ------------------------------------------------------------------------------


# Bob's lesson 02: exercise 2.1 with the typical slip (the upper triangle: row and column swapped), 2.2
# right, 2.3 not written (the stub nbgrader left).
TRANSPOSED_MASK = ["    return torch.triu(torch.ones(T, T, dtype=torch.bool))"]


@pytest.fixture(scope="module")
def course(tmp_path_factory):
    """A course folder in a temp dir with every lesson generated by `nbgrader generate_assignment`."""
    root = tmp_path_factory.mktemp("course")
    write_course(root, NOTEBOOKS)
    run_nbgrader(root, "generate_assignment", "--assignment=*")
    return root


@pytest.fixture(scope="module")
def graded(course):
    """Two submissions of lesson 02, autograded and given feedback by nbgrader: ada hands in the instructor
    notebook, bob the release with one exercise wrong, one right and one not written."""
    release = nbformat.read(course / "release" / FAST_LESSON / f"{FAST_LESSON}.ipynb", as_version=4)
    instructor = nbformat.read(course / "source" / FAST_LESSON / f"{FAST_LESSON}.ipynb", as_version=4)
    bob = learner_copy(release, instructor, {"causal_mask": TRANSPOSED_MASK, "attention_scores": None})
    for student, notebook in (("ada", instructor), ("bob", bob)):
        folder = course / "submitted" / student / FAST_LESSON
        folder.mkdir(parents=True)
        nbformat.write(notebook, folder / f"{FAST_LESSON}.ipynb")
    # The kernels nbgrader starts import tinyformer from this checkout.
    env = {"PYTHONPATH": str(REPO / "src")}
    run_nbgrader(course, "autograde", FAST_LESSON, extra_env=env)
    run_nbgrader(course, "generate_feedback", FAST_LESSON, extra_env=env)
    return course


@pytest.mark.slow
def test_every_lesson_generates_the_same_student_copy_as_make_student(course):
    lessons = sorted(NOTEBOOKS.glob("*.ipynb"))
    assert sorted(p.name for p in (course / "release").glob("*/*.ipynb")) == [p.name for p in lessons]
    for path in lessons:
        instructor = nbformat.read(path, as_version=4)
        released = nbformat.read(course / "release" / path.stem / path.name, as_version=4)
        ours = student_notebook(instructor)
        assert [c.source for c in released.cells] == [c.source for c in ours.cells], path.name
        assert released.cells == ours.cells, f"{path.name}: metadata (locks, checksums) differ"
        assert find_leaks(instructor, released) == [], path.name
        assert checker_calls(released) == checker_calls(instructor), path.name
        stubs = [c for c in released.cells if is_solution(c)]
        assert all(STUB_BODY in c.source and BEGIN not in c.source for c in stubs), path.name
        assert len(stubs) == sum(is_solution(c) for c in instructor.cells), path.name
    assert (course / "gradebook.db").is_file(), "the gradebook belongs in the course folder"
    strays = [folder for folder in (REPO, NOTEBOOKS, REPO / "tests") if (folder / "gradebook.db").exists()]
    assert strays == [], "nbgrader wrote a gradebook into the repository"


@pytest.mark.slow
def test_autograde_gives_full_partial_and_no_marks(graded):
    points = scores(graded, FAST_LESSON)
    checks = {"check_causal_mask", "check_attention_scores", "check_causal_attention"}
    assert points == {
        "ada": dict.fromkeys(checks, 1.0),
        "bob": {"check_causal_mask": 0.0, "check_attention_scores": 1.0, "check_causal_attention": 0.0},
    }


def feedback_text(course: Path, student: str) -> str:
    page = (course / "feedback" / student / FAST_LESSON / f"{FAST_LESSON}.html").read_text()
    return html.unescape(re.sub(r"<[^>]+>", "", page))


def printed(function_check, function) -> list[str]:
    """The checker's own verdict on ``function``: the independent reference for what the feedback shows."""
    return [line.strip() for line in function_check(function).message.splitlines()]


@pytest.mark.slow
def test_the_feedback_shows_the_checkers_hints(graded):
    import torch

    def causal_mask(T):
        return torch.triu(torch.ones(T, T, dtype=torch.bool))

    def causal_attention(q, k, v):
        raise NotImplementedError("exercise: write this function, then run the check below")

    bob = feedback_text(graded, "bob")
    for line in printed(check_causal_mask, causal_mask) + printed(check_causal_attention, causal_attention):
        assert line in bob
    assert "hint: that is the upper triangle" in bob and "not written yet" in bob
    assert "✅ check_attention_scores: passed" in bob
    assert f"{FAST_LESSON} (Score: 1.0 / 3.0)" in bob
    ada = feedback_text(graded, "ada")
    assert f"{FAST_LESSON} (Score: 3.0 / 3.0)" in ada and ada.count("passed") == 3 and "❌" not in ada


@pytest.mark.slow
def test_a_student_copy_runs_every_cell_but_the_failing_checks(graded):
    """Bob's copy ran top to bottom under autograde: the only cells with an error are the two checker cells of
    the exercises he got wrong or left, each showing the checker's message, not a traceback into his code."""
    autograded = nbformat.read(graded / "autograded" / "bob" / FAST_LESSON / f"{FAST_LESSON}.ipynb", as_version=4)
    code = [c for c in autograded.cells if c.cell_type == "code"]
    assert all(c.execution_count is not None for c in code), "autograde stopped before the end"
    failed = [c.source for c in code if any(o.output_type == "error" for o in c.outputs)]
    assert failed == ["assert check_causal_mask(causal_mask)", "assert check_causal_attention(causal_attention)"]
    for cell in code:
        if cell.source in failed:
            shown = "".join(o.get("text", "") for o in cell.outputs)
            assert "❌" in shown and "Traceback" not in shown


EXPORTING_LESSON = "05_generation_and_kv_cache"  # loads nano.pt, writes the export nano-hf: what the class serves


@pytest.mark.slow
def test_autograding_a_lesson_that_saves_the_model_leaves_the_class_files_as_they_were(tmp_path, monkeypatch):
    """The class's artifacts (the model its server serves and new learners are seeded from) are byte-identical
    after nbgrader autogrades lesson 05, which exports nano to nano-hf, the folder the class's server serves: the
    grading kernels wrote into a scratch copy. (Lesson 04 would show the same with nano.pt, but trains nano again
    for two minutes in the grading kernel; lesson 05 loads the class's nano.pt.)"""
    import torch

    from tinyformer.config import ModelConfig
    from tinyformer.export import export_hf
    from tinyformer.model import Transformer
    from tinyformer.paths import artifacts_dir
    from tinyformer.train import checkpoint_name, load_or_train

    class_artifacts = tmp_path / "class-artifacts"
    class_artifacts.mkdir()
    _, tokenizer = load_or_train("nano", progress=False)  # lesson 04's model, as on a class's machine
    shutil.copy(artifacts_dir() / checkpoint_name("nano"), class_artifacts)
    torch.manual_seed(7)  # not nano.pt's model: lesson 05 writing into the class's nano-hf would change its bytes
    stale = Transformer(ModelConfig.preset("nano", vocab_size=len(tokenizer))).eval()
    export_hf(stale, tokenizer, class_artifacts / "nano-hf", verify=False)
    before = {p: p.read_bytes() for p in sorted(class_artifacts.rglob("*")) if p.is_file()}

    monkeypatch.setenv("TINYFORMER_ARTIFACTS", str(class_artifacts))  # as on the class's machine
    course = tmp_path / "course"
    lessons = tmp_path / "notebooks"
    lessons.mkdir()
    (lessons / f"{EXPORTING_LESSON}.ipynb").write_bytes((NOTEBOOKS / f"{EXPORTING_LESSON}.ipynb").read_bytes())
    write_course(course, lessons)
    config = course / "nbgrader_config.py"
    assert repr(str(class_artifacts.resolve())) in config.read_text()
    env = {"PYTHONPATH": str(REPO / "src"), "TMPDIR": str(tmp_path)}  # the scratch copy goes under tmp_path
    run_nbgrader(course, "generate_assignment", EXPORTING_LESSON, extra_env=env)
    submitted = course / "submitted" / "ada" / EXPORTING_LESSON
    submitted.mkdir(parents=True)
    shutil.copy(course / "source" / EXPORTING_LESSON / f"{EXPORTING_LESSON}.ipynb", submitted)
    run_nbgrader(course, "autograde", EXPORTING_LESSON, extra_env=env)

    assert scores(course, EXPORTING_LESSON) == {"ada": {"check_cache_append": 1.0, "check_greedy_next_token": 1.0}}
    graded = nbformat.read(course / "autograded" / "ada" / EXPORTING_LESSON / f"{EXPORTING_LESSON}.ipynb", 4)
    assert not [o for c in graded.cells for o in c.get("outputs", []) if o.output_type == "error"]  # ran clean
    saved = [o.text for c in graded.cells if "export_hf(" in c.source for o in c.outputs if "text" in o]
    after = {p: p.read_bytes() for p in sorted(class_artifacts.rglob("*")) if p.is_file()}
    assert after == before
    assert saved and f"{tmp_path}/tinyformer-grading-" in saved[0] and "nano-hf" in saved[0]  # it did export
    assert list(tmp_path.glob("tinyformer-grading-*")) == []  # the scratch copy is gone with nbgrader
    assert stat.S_IMODE((course / "gradebook.db").stat().st_mode) & 0o077 == 0  # the grades are the instructor's
