"""Student copies of the notebooks: solutions become stubs, nothing leaks, checks stay, the rest still runs.
(nbgrader's metadata and real nbgrader runs: tests/test_workshop_nbgrader.py.)"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from conftest import REPO
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

from tinyformer.workshop.nbgrader_meta import mark_notebook
from tinyformer.workshop.student import (
    STUB_BODY,
    build_student_notebooks,
    checker_calls,
    find_leaks,
    is_solution,
    student_notebook,
)

NOTEBOOKS = REPO / "notebooks"
LESSONS = [f"{n:02d}" for n in range(1, 14)]  # lessons with exercises; 00 is the setup check

SOLUTION = '''# Exercise: the causal mask.
# Return a bool tensor [T, T], True where token i may look at token j.
def causal_mask(T):
    """Lower triangle, diagonal included."""
    allowed = torch.ones(T, T, dtype=torch.bool)  # every pair first
    return torch.tril(allowed)'''

SOLUTION_BODY = ["allowed = torch.ones(T, T, dtype=torch.bool)", "return torch.tril(allowed)", "every pair first"]


def synthetic_notebook() -> nbformat.NotebookNode:
    """A small lesson: setup, a prompt, a solution cell, its check, a later ordinary cell."""
    cells = [
        nbformat.v4.new_markdown_cell("# A tiny lesson"),
        nbformat.v4.new_code_cell("import torch\n\nfrom tinyformer.checks import check_causal_mask\n\nsteps = 3"),
        nbformat.v4.new_markdown_cell("**Exercise.** Write the causal mask."),
        nbformat.v4.new_code_cell(SOLUTION, metadata={"tags": ["solution"]}),
        nbformat.v4.new_code_cell("assert check_causal_mask(causal_mask)"),
        nbformat.v4.new_code_cell("after = steps * 2\nassert after == 6\nprint('after the exercise:', after)"),
    ]
    notebook = nbformat.v4.new_notebook(cells=cells)
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    notebook.cells[1].outputs = [nbformat.v4.new_output("stream", text="old output\n")]
    notebook.cells[1].execution_count = 7
    return notebook


@pytest.fixture
def lesson_dir(tmp_path) -> Path:
    folder = tmp_path / "notebooks"
    folder.mkdir()
    nbformat.write(synthetic_notebook(), folder / "01_tiny.ipynb")
    return folder


def stub_of(source: str) -> str:
    """The student version of one exercise cell, through the real pipeline (marking, then nbgrader)."""
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(source, metadata={"tags": ["solution"]})])
    return student_notebook(notebook).cells[0].source


def test_stub_keeps_the_prompt_and_signature_and_drops_the_body():
    stub = stub_of(SOLUTION)
    assert stub == "\n".join([*SOLUTION.splitlines()[:4], "    " + STUB_BODY])
    assert not any(line in stub for line in SOLUTION_BODY)
    compile(stub, "<stub>", "exec")  # still valid Python: the learner can run the cell as it is


def test_stub_handles_several_functions_decorators_and_comments_above_the_body():
    source = "# two parts\n@staticmethod\ndef a(x):\n    # hint\n    return x + 1\n\n\ndef b(y):\n    return y * 2\n"
    stub = stub_of(source)
    compile(stub, "<stub>", "exec")
    assert "@staticmethod\ndef a(x):" in stub and "def b(y):" in stub and stub.count(STUB_BODY) == 2
    for solution in ("return x + 1", "y * 2", "# hint"):
        assert solution not in stub


def test_student_copy_of_the_synthetic_lesson(lesson_dir, tmp_path):
    (copy,) = build_student_notebooks(lesson_dir, tmp_path / "student")
    instructor = nbformat.read(copy.source, as_version=4)
    student = nbformat.read(copy.target, as_version=4)
    nbformat.validate(student)

    assert copy.exercises == 1
    assert find_leaks(instructor, student) == []
    assert not any(line in copy.target.read_text() for line in SOLUTION_BODY)
    assert checker_calls(student) == checker_calls(instructor) == ["check_causal_mask("]
    for before, after in zip(instructor.cells, student.cells, strict=True):
        if is_solution(before):
            assert after.metadata["nbgrader"]["solution"] and STUB_BODY in after.source
        else:
            assert after.source == before.source and after.cell_type == before.cell_type
        if after.cell_type == "code":
            assert after.outputs == [] and after.execution_count is None


def execute(notebook: nbformat.NotebookNode, cwd: Path) -> nbformat.NotebookNode:
    NotebookClient(notebook, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(cwd)}}).execute()
    return notebook


def test_student_copy_runs_once_the_exercises_are_filled_in(lesson_dir, tmp_path):
    """Every non-exercise cell runs: stubs filled with the reference solution, executed in a real kernel."""
    (copy,) = build_student_notebooks(lesson_dir, tmp_path / "student")
    instructor = nbformat.read(copy.source, as_version=4)
    student = nbformat.read(copy.target, as_version=4)
    for before, after in zip(instructor.cells, student.cells, strict=True):
        if is_solution(before):
            after.source = mark_notebook(instructor).cells[instructor.cells.index(before)].source
    executed = execute(student, tmp_path)
    printed = "".join(o.get("text", "") for c in executed.cells if c.cell_type == "code" for o in c.outputs)
    assert "✅ check_causal_mask: passed" in printed and "after the exercise: 6" in printed


def test_an_unsolved_exercise_stops_at_its_check_with_a_friendly_message(lesson_dir, tmp_path):
    (copy,) = build_student_notebooks(lesson_dir, tmp_path / "student")
    student = nbformat.read(copy.target, as_version=4)
    with pytest.raises(CellExecutionError) as error:
        execute(student, tmp_path)
    assert "AssertionError" in str(error.value)
    check_cell = next(c for c in student.cells if "check_causal_mask(causal_mask)" in c.source)
    shown = "".join(o.get("text", "") for o in check_cell.outputs)
    assert "not written yet" in shown and "Traceback" not in shown


def test_refuses_to_overwrite_the_instructor_notebooks(lesson_dir):
    with pytest.raises(ValueError, match="would replace the solutions"):
        build_student_notebooks(lesson_dir, lesson_dir)
    with pytest.raises(FileNotFoundError, match="no notebooks folder"):
        build_student_notebooks(lesson_dir / "missing", lesson_dir.parent / "out")


def test_a_syntax_error_in_an_exercise_names_the_notebook_and_writes_no_copy(lesson_dir, tmp_path):
    broken = synthetic_notebook()
    broken.cells[3].source = SOLUTION.replace("return torch.tril(allowed)", "return torch.tril(allowed")
    nbformat.write(broken, lesson_dir / "02_broken.ipynb")
    with pytest.raises(ValueError, match=r"02_broken.ipynb: cell 3 \(an exercise\) is not valid Python: '\(' was"):
        build_student_notebooks(lesson_dir, tmp_path / "class")
    assert not (tmp_path / "class").exists()  # not even 01_tiny's copy: nothing or everything


def test_the_command_line(lesson_dir, tmp_path):
    out = tmp_path / "class"
    result = subprocess.run(
        [sys.executable, "-m", "tinyformer.workshop", "student-notebooks", str(out), "--source", str(lesson_dir)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "wrote 1 student notebooks with 1 exercise" in result.stdout
    assert (out / "01_tiny.ipynb").is_file()


# ----- the real lessons ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def real_copies(tmp_path_factory):
    out = tmp_path_factory.mktemp("student-notebooks")
    return {copy.source.name: copy for copy in build_student_notebooks(NOTEBOOKS, out)}


def test_every_lesson_has_exercises_with_checks(real_copies):
    for lesson in LESSONS:
        names = [name for name in real_copies if name.startswith(lesson)]
        assert names, f"no notebook for lesson {lesson}"
        assert real_copies[names[0]].exercises >= 1, f"lesson {lesson} has no exercise (cell tagged 'solution')"


def test_real_student_copies_are_valid_and_leak_nothing(real_copies):
    for copy in real_copies.values():
        instructor = nbformat.read(copy.source, as_version=4)
        student = nbformat.read(copy.target, as_version=4)
        nbformat.validate(student)
        assert find_leaks(instructor, student) == [], copy.source.name
        assert checker_calls(student) == checker_calls(instructor), copy.source.name
        for cell in student.cells:
            if cell.cell_type == "code":
                assert cell.outputs == [] and cell.execution_count is None


def test_every_exercise_is_checked_by_a_later_cell(real_copies):
    """Each solution cell defines functions and a later cell passes each of them to a checker."""
    for copy in real_copies.values():
        cells = nbformat.read(copy.source, as_version=4).cells
        for index, cell in enumerate(cells):
            if not (is_solution(cell) and cell.cell_type == "code"):
                continue
            names = re.findall(r"^def (\w+)\(", cell.source, flags=re.MULTILINE)
            assert names, f"{copy.source.name}: a solution cell defines no function"
            later = "\n".join(c.source for c in cells[index + 1 :] if c.cell_type == "code")
            for name in names:
                assert re.search(rf"check_\w+\({name}\b", later), f"{copy.source.name}: {name} is never checked"


def test_filled_student_copies_equal_the_instructor_notebooks(real_copies):
    """With the solutions put back, a student copy is the instructor notebook cell for cell, so nbmake's run of
    the instructor notebooks also proves every non-exercise cell of the student copies runs."""
    for copy in real_copies.values():
        instructor = nbformat.read(copy.source, as_version=4)
        student = nbformat.read(copy.target, as_version=4)
        assert len(student.cells) == len(instructor.cells)
        for before, after in zip(instructor.cells, student.cells, strict=True):
            assert after.cell_type == before.cell_type
            assert after.source == before.source or is_solution(before)
        assert student_notebook(instructor).cells == student.cells


def test_leak_check_judges_by_the_solution_not_by_the_stubber(lesson_dir, tmp_path, monkeypatch):
    """A stubber that keeps a solution line must be caught: the check decides what is an answer on its own."""
    import tinyformer.workshop.student as student_module

    (copy,) = build_student_notebooks(lesson_dir, tmp_path / "good")
    assert find_leaks(nbformat.read(copy.source, as_version=4), nbformat.read(copy.target, as_version=4)) == []

    real_marking = student_module.mark_notebook

    def marking_that_keeps_a_line(notebook):  # END SOLUTION one line too early: the last line is shown
        marked = real_marking(notebook)
        for cell in marked.cells:
            last, end = "    return torch.tril(allowed)", "    ### END SOLUTION"
            cell.source = cell.source.replace(f"{last}\n{end}", f"{end}\n{last}")
        return marked

    monkeypatch.setattr(student_module, "mark_notebook", marking_that_keeps_a_line)
    (broken,) = build_student_notebooks(lesson_dir, tmp_path / "broken")
    leaks = find_leaks(nbformat.read(broken.source, as_version=4), nbformat.read(broken.target, as_version=4))
    assert leaks == ["return torch.tril(allowed)"]
