"""Student copies of the lesson notebooks: every cell tagged ``solution`` becomes an exercise stub.

The committed notebooks are the instructor versions. In a solution cell the learner's task is a
function; its student stub keeps what states the task and drops what solves it:

    # Exercise 2.1 - the causal mask.                      <- leading comments: kept
    def causal_mask(T):                                    <- signature and docstring: kept
        \"\"\"Bool [T, T], True where token i may look at token j.\"\"\"
        return torch.tril(torch.ones(T, T, dtype=torch.bool))   <- body: raise NotImplementedError

Every other cell is copied unchanged, outputs and execution counts are stripped, and the checker
cells (``assert check_causal_mask(causal_mask)``) stay, so the learner gets feedback in place.
"""

from __future__ import annotations

import ast
import os
import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import nbformat

SOLUTION_TAG = "solution"
EXERCISE_TAG = "exercise"  # what the stub cell is tagged instead
STUB_BODY = 'raise NotImplementedError("exercise: write this function, then run the check below")'
MARKDOWN_STUB = "*Your answer here.*"
CHECK_CALL = re.compile(r"\bcheck_\w+\(")


@dataclass(frozen=True)
class StudentCopy:
    source: Path
    target: Path
    exercises: int  # solution cells replaced by stubs


def is_solution(cell) -> bool:
    return SOLUTION_TAG in cell.get("metadata", {}).get("tags", [])


def student_notebook(notebook: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """A copy of ``notebook`` with solution cells replaced by stubs and every output stripped."""
    copy = nbformat.from_dict(notebook)  # a deep copy: the instructor notebook is left as it was
    copy.cells = [_stub(cell) if is_solution(cell) else cell for cell in copy.cells]
    for cell in copy.cells:
        _strip_outputs(cell)
    return copy


def stub_source(source: str) -> str:
    """The exercise left for the learner: leading comments, then each function's signature and docstring
    with its body replaced. Statements that are not function definitions are dropped (they are solution)."""
    lines = source.splitlines()
    try:
        tree = ast.parse(source)
    except SyntaxError:  # IPython magics and the like: keep only the prompt
        tree = None
    kept = _leading_comments(lines)
    functions = [n for n in (tree.body if tree else []) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
    for index, node in enumerate(functions):
        kept += ["", ""] if index else []  # PEP 8's two blank lines between functions
        kept += _signature_and_docstring(node, lines)
    if not any(line.lstrip().startswith(("def ", "async def ")) for line in kept):
        kept.append("# your code here")
    return "\n".join(kept).strip("\n")


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
    out_dir.mkdir(parents=True, exist_ok=True)
    copies = []
    for path in notebooks:
        notebook = nbformat.read(path, as_version=4)
        student = student_notebook(notebook)
        nbformat.validate(student)
        _write_atomically(student, out_dir / path.name)
        exercises = sum(is_solution(cell) for cell in notebook.cells)
        copies.append(StudentCopy(path, out_dir / path.name, exercises))
    return copies


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
    """The lines of a solution cell that give the answer away (stripped): in code, everything but the prompt
    comments at the top, the ``def`` lines and their docstrings; in markdown, everything after the question."""
    lines = cell.source.splitlines()
    if cell.cell_type == "markdown":
        answer = lines[len(_leading_prompt_lines(cell.source)) :]
    else:
        allowed = set(range(len(_leading_comments(lines))))  # 0-based line numbers the stub may show
        for node in ast.parse(cell.source).body:
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.body[0].lineno > node.lineno:
                allowed |= _signature_and_docstring_lines(node, lines)
        answer = [line for number, line in enumerate(lines) if number not in allowed]
    return [line.strip() for line in answer if line.strip()]


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


def _student_lines(cell) -> list[str]:
    return [line.strip() for line in _stub(cell).source.splitlines()]


def _stub(cell) -> nbformat.NotebookNode:
    stub = nbformat.from_dict(cell)
    tags = [t for t in stub.metadata.get("tags", []) if t != SOLUTION_TAG]
    stub.metadata["tags"] = [*tags, EXERCISE_TAG]
    if cell.cell_type == "markdown":
        stub.source = "\n".join([*_leading_prompt_lines(cell.source), MARKDOWN_STUB])
    else:
        stub.source = stub_source(cell.source)
    return stub


def _strip_outputs(cell) -> None:
    if cell.cell_type == "code":
        cell.outputs = []
        cell.execution_count = None
    cell.metadata.pop("execution", None)  # timings JupyterLab records
    cell.metadata.pop("collapsed", None)
    cell.metadata.pop("scrolled", None)


def _leading_comments(lines: list[str]) -> list[str]:
    """The prompt at the top of a cell: comment lines (and a cell magic such as %%time), up to the code."""
    kept = []
    for line in lines:
        if line.strip() and not line.lstrip().startswith(("#", "%")):
            break
        kept.append(line)
    return kept


def _leading_prompt_lines(markdown: str) -> list[str]:
    """Lines of a markdown solution up to its first blank line (the question, not the answer)."""
    lines = markdown.splitlines()
    return lines[: lines.index("")] if "" in lines else lines[:1]


def _signature_and_docstring(node: ast.FunctionDef | ast.AsyncFunctionDef, lines: list[str]) -> list[str]:
    start = min([node.lineno, *(d.lineno for d in node.decorator_list)])  # 1-based, decorators included
    first = node.body[0]
    if first.lineno == node.lineno:  # `def f(x): return x`: cut the body off the signature's line
        signature = [*lines[start - 1 : node.lineno - 1], lines[node.lineno - 1][: first.col_offset].rstrip()]
        return [*signature, " " * (node.col_offset + 4) + STUB_BODY]
    signature_end = first.lineno - 1
    while signature_end > node.lineno and _blank_or_comment(lines[signature_end - 1]):
        signature_end -= 1  # comments above the first statement explain the solution: not kept
    kept = lines[start - 1 : signature_end]
    if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
        kept += lines[first.lineno - 1 : first.end_lineno]  # the docstring states the task
    return [*kept, " " * first.col_offset + STUB_BODY]


def _blank_or_comment(line: str) -> bool:
    return not line.strip() or line.lstrip().startswith("#")


def _write_atomically(notebook: nbformat.NotebookNode, path: Path) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            nbformat.write(notebook, f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
