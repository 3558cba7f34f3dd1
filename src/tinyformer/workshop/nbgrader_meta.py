"""nbgrader's own cell metadata on the instructor notebooks, derived from the ``solution`` tag.

The author's marks stay what they were: an exercise is a code cell tagged ``solution``, checked by a later
cell ``assert check_xxx(fn)``. This module writes what nbgrader (schema version 3) needs from them, so
``nbgrader generate_assignment`` and ``nbgrader autograde`` work on the committed notebooks:

    solution cell   ``### BEGIN SOLUTION`` / ``### END SOLUTION`` around each function's body (comments, so
                    the notebook still runs as it is); nbgrader keeps the prompt, signature and docstring
                    and puts its code stub where the body was. Metadata: solution, editable, not graded.
    test cell       the checker cell after it: graded (1 point unless the instructor set other points),
                    locked, so autograde runs the original check even if a learner edited it.
    prose           every markdown cell: read-only (locked).
    other code      no nbgrader metadata: learners may edit and re-run the lesson's code freely.

``mark_notebook`` is idempotent: on a marked notebook it changes nothing, and it keeps grade ids and points
already there (an instructor may have re-weighted a test). ``tinyformer workshop nbgrader-metadata`` runs it
over a folder; tests/test_workshop_nbgrader.py checks that the committed notebooks are up to date.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import nbformat

from tinyformer.paths import atomic_file

SOLUTION_TAG = "solution"  # the author's mark on an exercise cell
SCHEMA_VERSION = 3
BEGIN, END = "### BEGIN SOLUTION", "### END SOLUTION"
POINTS_PER_CHECK = 1
CHECKED_FUNCTION = re.compile(r"\b(check_\w+)\(\s*(\w+)")  # check_causal_mask(causal_mask ...


def is_solution(cell) -> bool:
    return SOLUTION_TAG in cell.get("metadata", {}).get("tags", [])


def mark_solution_source(source: str) -> str:
    """``source`` with ``### BEGIN/END SOLUTION`` around the body of each function (after its docstring).

    A cell that already holds the markers is returned unchanged. An exercise cell must be prompt comments
    followed by function definitions: anything else would either leak or leave the student copy unrunnable."""
    if BEGIN in source or END in source:
        _check_markers(source)
        return source
    lines = source.splitlines()
    tree = ast.parse(source)
    regions = []  # (first line of the answer, last line), 0-based, inclusive
    for node in tree.body:
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            raise ValueError(
                f"an exercise cell holds prompt comments and function definitions only, but line {node.lineno} "
                f"is `{lines[node.lineno - 1].strip()}`: move that statement to the cell before the exercise, or "
                "into the function."
            )
        if node.body[0].lineno == node.lineno:
            raise ValueError(
                f"`{lines[node.lineno - 1].strip()}`: the body of {node.name}() is on its `def` line; put it on "
                "lines of its own so nbgrader can replace it and keep the signature."
            )
        regions.append((_answer_start(node, lines), node.end_lineno - 1))
    if not regions:
        raise ValueError("an exercise cell must define the function the learner writes; this one defines none.")
    marked = list(lines)
    for start, end in reversed(regions):  # from the bottom, so earlier line numbers stay valid
        indent = " " * _indent_of_first_statement(lines, start, end)
        marked[end + 1 : end + 1] = [indent + END]
        marked[start:start] = [indent + BEGIN]
    return "\n".join(marked)


def mark_notebook(notebook: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """A copy of ``notebook`` carrying nbgrader's metadata (see the module docstring); the input is untouched."""
    marked = nbformat.from_dict(notebook)
    exercises: set[str] = set()  # functions defined by solution cells so far
    used_ids = _ids_to_keep(marked.cells)
    for index, cell in enumerate(marked.cells):
        old = cell.metadata.get("nbgrader", {})
        if is_solution(cell):
            if cell.cell_type != "code":
                raise ValueError(
                    f"cell {index} is a {cell.cell_type} cell tagged `solution`: exercises here are code (a function "
                    "and its checker). nbgrader would need a manually graded answer; remove the tag or make it code."
                )
            cell.source = _marked_exercise(cell.source, index)
            names = [n.name for n in ast.parse(cell.source).body]
            exercises.update(names)
            meta = {"solution": True, "grade": False, "locked": False}
            default_id = "-".join(names)
        elif cell.cell_type == "code" and (checks := _checks_of(cell.source, exercises)):
            meta = {"solution": False, "grade": True, "locked": True, "points": old.get("points", POINTS_PER_CHECK)}
            default_id = checks[0]
        elif cell.cell_type == "markdown":
            meta = {"solution": False, "grade": False, "locked": True}
            default_id = None
        else:
            cell.metadata.pop("nbgrader", None)
            continue
        grade_id = old.get("grade_id") if used_ids.get(old.get("grade_id")) == index else None
        grade_id = grade_id or _free_id(default_id, used_ids)
        used_ids[grade_id] = index
        cell.metadata["nbgrader"] = {**meta, "grade_id": grade_id, "schema_version": SCHEMA_VERSION, "task": False}
    return marked


def _marked_exercise(source: str, index: int) -> str:
    """mark_solution_source on cell ``index``, any problem reported as a ValueError that names the cell."""
    try:
        return mark_solution_source(source)
    except SyntaxError as error:
        raise ValueError(
            f"cell {index} (an exercise) is not valid Python: {error.msg} at its line {error.lineno} "
            f"(`{(error.text or '').strip()}`). Fix the cell so the notebook runs, then try again."
        ) from None
    except ValueError as error:
        raise ValueError(f"cell {index} (an exercise): {error}") from None


def mark_file(path: Path) -> tuple[nbformat.NotebookNode, nbformat.NotebookNode]:
    """(the notebook at ``path``, a marked copy); a bad exercise cell is a ValueError naming the file and cell."""
    notebook = nbformat.read(path, as_version=4)
    try:
        return notebook, mark_notebook(notebook)
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from None


def mark_notebooks(folder: str | Path, check: bool = False) -> list[Path]:
    """Mark every ``*.ipynb`` in ``folder`` in place (atomically); returns the notebooks that changed.
    With ``check``, writes nothing and only reports which notebooks are out of date."""
    folder = Path(folder)
    paths = sorted(folder.glob("*.ipynb"))
    if not paths:
        raise FileNotFoundError(f"{folder} holds no .ipynb files; pass the folder that holds the lessons.")
    marked = [(path, *mark_file(path)) for path in paths]  # every notebook checked before any is written
    changed = [path for path, notebook, copy in marked if copy != notebook]
    if not check:
        for path, notebook, copy in marked:
            if copy != notebook:
                write_notebook_atomically(copy, path)
    return changed


def notebook_text(notebook: nbformat.NotebookNode) -> str:
    """What a notebook file written by this suite holds (nbformat's JSON and a final newline)."""
    return nbformat.writes(notebook) + "\n"


def write_notebook_atomically(notebook: nbformat.NotebookNode, path: Path) -> None:
    with atomic_file(path) as tmp:
        tmp.write_text(notebook_text(notebook), encoding="utf-8")


# ----- helpers ------------------------------------------------------------------------------------


def _answer_start(node: ast.FunctionDef | ast.AsyncFunctionDef, lines: list[str]) -> int:
    """0-based line where the answer begins: after the docstring, else right after the ``def`` header.
    Comments between the header (or docstring) and the first statement belong to the answer."""
    first = node.body[0]
    if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
        if len(node.body) == 1:
            raise ValueError(f"{node.name}() has only a docstring: there is no answer to hide.")
        return first.end_lineno  # 1-based end of the docstring = 0-based next line
    start = first.lineno - 1
    while start > node.lineno and (not lines[start - 1].strip() or lines[start - 1].lstrip().startswith("#")):
        start -= 1  # walk back over comments and blank lines above the first statement
    return start


def _indent_of_first_statement(lines: list[str], start: int, end: int) -> int:
    code = next(line for line in lines[start : end + 1] if line.strip() and not line.lstrip().startswith("#"))
    return len(code) - len(code.lstrip())


def _check_markers(source: str) -> None:
    """Markers written by hand: each BEGIN closed by an END before the next BEGIN (nbgrader's own rule)."""
    open_region = False
    for line in source.splitlines():
        if BEGIN in line or END in line:
            if open_region == (BEGIN in line):
                raise ValueError(f"unbalanced solution markers at `{line.strip()}`: every {BEGIN} needs one {END}.")
            open_region = BEGIN in line
    if open_region:
        raise ValueError(f"a {BEGIN} has no {END}.")


def _checks_of(source: str, exercises: set[str]) -> list[str]:
    """The checkers this cell calls on an exercise function (``assert check_mask(causal_mask)``)."""
    return [check for check, argument in CHECKED_FUNCTION.findall(source) if argument in exercises]


def _ids_to_keep(cells) -> dict[str, int]:
    """{grade id: cell index} for ids already present; a duplicate (a copied cell) stays with its first cell."""
    kept: dict[str, int] = {}
    for index, cell in enumerate(cells):
        grade_id = cell.metadata.get("nbgrader", {}).get("grade_id")
        if grade_id:
            kept.setdefault(grade_id, index)
    return kept


def _free_id(wanted: str | None, used: dict[str, int]) -> str:
    """``wanted`` if no other cell has it, else ``wanted-2``, ``-3``...; prose gets ``prose-1``, ``prose-2``..."""
    stem, number = (wanted, 1) if wanted else ("prose", 1)
    candidate = stem if wanted else f"{stem}-{number}"
    while candidate in used:
        number += 1
        candidate = f"{stem}-{number}"
    return candidate
