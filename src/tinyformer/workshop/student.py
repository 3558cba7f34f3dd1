"""Student copies of the lesson notebooks, made by nbgrader's own preprocessors (what ``nbgrader
generate_assignment`` writes, without a course directory or gradebook).

The committed notebooks are the instructor versions. An exercise is a code cell tagged ``solution`` holding a
function, with nbgrader's markers around its body (nbgrader_meta.py writes them from the tag):

    # Exercise 2.1 - the causal mask.                      <- prompt comments: kept
    def causal_mask(T):                                    <- signature and docstring: kept
        \"\"\"Bool [T, T], True where token i may look at token j.\"\"\"
        ### BEGIN SOLUTION
        return torch.tril(torch.ones(T, T, dtype=torch.bool))   <- replaced by STUB_BODY
        ### END SOLUTION

Every other cell keeps its source, outputs and execution counts are stripped, and the checker cells
(``assert check_causal_mask(causal_mask)``) stay, so the learner gets feedback in place.
``find_leaks`` checks the result against what the instructor's cells give away, judged on its own.
"""

from __future__ import annotations

import ast
import re
import time
from dataclasses import dataclass
from pathlib import Path

import nbformat
from nbgrader.converters import GenerateAssignment
from nbgrader.preprocessors import SaveCells
from traitlets.config import Config

from tinyformer.workshop.nbgrader_meta import BEGIN, END, is_solution, mark_notebook, write_notebook_atomically

STUB_BODY = 'raise NotImplementedError("exercise: write this function, then run the check below")'
CHECK_CALL = re.compile(r"\bcheck_\w+\(")


@dataclass(frozen=True)
class StudentCopy:
    source: Path
    target: Path
    exercises: int  # solution cells replaced by stubs


def nbgrader_config() -> Config:
    """The nbgrader settings of this suite; a course's nbgrader_config.py sets the same (nbgrader_course.py)."""
    config = Config()
    config.ClearSolutions.code_stub = {"python": STUB_BODY}
    return config


def student_notebook(notebook: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """The student version of ``notebook``: nbgrader's release preprocessors over its marked copy."""
    student, resources = mark_notebook(notebook), {}  # a copy: the instructor notebook is left as it was
    config = nbgrader_config()
    for step in release_steps():
        student, resources = step(config=config).preprocess(student, resources)
    return student


def release_steps() -> list[type]:
    """``nbgrader generate_assignment``'s own preprocessors, in its order, minus SaveCells (which records the
    cells in a course's gradebook database): solutions cleared, outputs stripped, cells locked, checksums."""
    return [step for step in GenerateAssignment.class_traits()["preprocessors"].default() if step is not SaveCells]


def build_student_notebooks(source_dir: str | Path, out_dir: str | Path) -> list[StudentCopy]:
    """Write a student copy of every ``*.ipynb`` in ``source_dir`` into ``out_dir`` (each file atomically)."""
    source_dir, out_dir = Path(source_dir), Path(out_dir)
    if not source_dir.is_dir():
        raise FileNotFoundError(f"no notebooks folder at {source_dir}; pass the folder that holds the lessons.")
    notebooks = sorted(source_dir.glob("*.ipynb"))
    if not notebooks:
        raise FileNotFoundError(f"{source_dir} holds no .ipynb files; pass the folder that holds the lessons.")
    if out_dir.resolve() == source_dir.resolve():
        raise ValueError(
            f"the output folder {out_dir} is the instructor notebooks' own folder: writing there would replace "
            "the solutions. Choose another folder, e.g. artifacts/student-notebooks."
        )
    students = {path: _student_copy_of(path) for path in notebooks}  # every lesson checked before any is written
    out_dir.mkdir(parents=True, exist_ok=True)
    copies = []
    for path, (notebook, student) in students.items():
        write_notebook_atomically(student, out_dir / path.name)
        exercises = sum(is_solution(cell) for cell in notebook.cells)
        copies.append(StudentCopy(path, out_dir / path.name, exercises))
    return copies


def _student_copy_of(path: Path) -> tuple[nbformat.NotebookNode, nbformat.NotebookNode]:
    """(the lesson at ``path``, its student copy); a bad exercise cell is a ValueError naming the file and cell."""
    notebook = nbformat.read(path, as_version=4)
    try:
        student = student_notebook(notebook)
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from None
    nbformat.validate(student)
    return notebook, student


def find_leaks(instructor: nbformat.NotebookNode, student: nbformat.NotebookNode) -> list[str]:
    """Lines of solution code that the student copy shows (and the instructor's other cells don't).

    What counts as solution is decided here from the instructor's cell alone (``answer_lines``), not from what
    the stubber chose to keep, so a stubber that keeps too much is caught."""
    shown_anyway = "\n".join(cell.source for cell in instructor.cells if not is_solution(cell))
    student_text = "\n".join(cell.source for cell in student.cells)
    return [
        line
        for cell in instructor.cells
        if is_solution(cell)
        for line in answer_lines(cell)
        if line in student_text and line not in shown_anyway
    ]


def answer_lines(cell) -> list[str]:
    """The lines of a solution cell that give the answer away (stripped): everything but the prompt comments
    at the top, the ``def`` lines and their docstrings (and nbgrader's markers, which are no answer)."""
    lines = cell.source.splitlines()
    allowed = set(range(len(_leading_comments(lines))))  # 0-based line numbers the stub may show
    for node in ast.parse(cell.source).body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.body[0].lineno > node.lineno:
            allowed |= _signature_and_docstring_lines(node, lines)
    answer = [line.strip() for number, line in enumerate(lines) if number not in allowed]
    return [line for line in answer if line and line not in (BEGIN, END)]


def _signature_and_docstring_lines(node: ast.FunctionDef | ast.AsyncFunctionDef, lines: list[str]) -> set[int]:
    """0-based numbers of the decorator, ``def`` and docstring lines of ``node`` (not comments before its body)."""
    first = node.body[0]
    start = min([node.lineno, *(d.lineno for d in node.decorator_list)])
    end = first.lineno - 1  # 1-based last line before the first statement
    while end > node.lineno and (not lines[end - 1].strip() or lines[end - 1].lstrip().startswith("#")):
        end -= 1
    shown = set(range(start - 1, end))
    if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
        shown |= set(range(first.lineno - 1, first.end_lineno))
    return shown


def checker_calls(notebook: nbformat.NotebookNode) -> list[str]:
    """Every ``check_...(`` call in the notebook's code cells, in order."""
    return [m.group(0) for cell in notebook.cells if cell.cell_type == "code" for m in CHECK_CALL.finditer(cell.source)]


def timed_build(source_dir: str | Path, out_dir: str | Path) -> tuple[list[StudentCopy], float]:
    start = time.perf_counter()
    copies = build_student_notebooks(source_dir, out_dir)
    return copies, time.perf_counter() - start


# ----- helpers ------------------------------------------------------------------------------------


def _leading_comments(lines: list[str]) -> list[str]:
    """The prompt at the top of a cell: comment lines (and a cell magic such as %%time), up to the code."""
    kept = []
    for line in lines:
        if line.strip() and not line.lstrip().startswith(("#", "%")):
            break
        kept.append(line)
    return kept
