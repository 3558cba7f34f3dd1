"""The project's set-up promises: pyproject and environment.yml agree, notebooks are stripped,
README's two commands exist as Makefile targets, CI runs `make test`, and the package's modules import
without a cycle."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import nbformat
import pytest
import yaml
from conftest import REPO
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))
# The extras that environment.yml mirrors (the `gpu` extra replaces `cpu` on NVIDIA machines).
MIRRORED_EXTRAS = ("cpu", "dev")


def requirement_map(lines: list[str], where: str) -> dict[str, str]:
    """{canonical name: specifier} for requirement strings; a name listed twice is an error."""
    found: dict[str, str] = {}
    for line in lines:
        req = Requirement(line)
        name = canonicalize_name(req.name)
        if name in found:
            raise ValueError(f"{req.name} is listed twice in {where}")
        found[name] = str(req.specifier)
    return found


def drift(pyproject: dict[str, str], conda: dict[str, str]) -> list[str]:
    """Human-readable differences between two requirement maps (empty when they agree)."""
    problems = [f"{n} is in pyproject.toml but not environment.yml" for n in sorted(pyproject.keys() - conda.keys())]
    problems += [f"{n} is in environment.yml but not pyproject.toml" for n in sorted(conda.keys() - pyproject.keys())]
    problems += [
        f"{n}: pyproject.toml pins {pyproject[n]!r}, environment.yml pins {conda[n]!r}"
        for n in sorted(pyproject.keys() & conda.keys())
        if pyproject[n] != conda[n]
    ]
    return problems


def pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def environment() -> dict:
    return yaml.safe_load((REPO / "environment.yml").read_text())


def conda_pip_lines(env: dict) -> list[str]:
    pip_sections = [dep["pip"] for dep in env["dependencies"] if isinstance(dep, dict) and "pip" in dep]
    assert len(pip_sections) == 1, "environment.yml needs exactly one `pip:` section"
    return pip_sections[0]


def test_environment_yml_mirrors_pyproject():
    project = pyproject()["project"]
    wanted = list(project["dependencies"])
    for extra in MIRRORED_EXTRAS:
        wanted += project["optional-dependencies"][extra]
    pip_lines = conda_pip_lines(environment())
    packages = [line for line in pip_lines if not line.startswith("-e")]
    assert "-e ." in pip_lines, "environment.yml should install the package itself (`-e .`)"
    problems = drift(requirement_map(wanted, "pyproject.toml"), requirement_map(packages, "environment.yml"))
    assert not problems, "environment.yml drifted from pyproject.toml:\n" + "\n".join(problems)


def test_environment_yml_python_matches_requires_python():
    conda_python = [dep for dep in environment()["dependencies"] if isinstance(dep, str) and dep.startswith("python")]
    assert conda_python == ["python=3.11"]
    assert pyproject()["project"]["requires-python"] == ">=3.11"


def test_drift_check_reports_a_changed_pin_and_a_missing_package():
    a = requirement_map(["torch==2.13.0", "numpy", "tqdm"], "a")
    b = requirement_map(["torch==2.12.0", "NumPy"], "b")
    assert drift(a, b) == [
        "tqdm is in pyproject.toml but not environment.yml",
        "torch: pyproject.toml pins '==2.13.0', environment.yml pins '==2.12.0'",
    ]
    with pytest.raises(ValueError, match="listed twice"):
        requirement_map(["numpy", "numpy>=2"], "x")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_is_committed_without_outputs(path: Path):
    notebook = nbformat.read(path, as_version=4)
    dirty = [
        f"cell {i}: {len(cell.outputs)} outputs, execution_count={cell.execution_count}"
        for i, cell in enumerate(notebook.cells)
        if cell.cell_type == "code" and (cell.outputs or cell.execution_count is not None)
    ]
    assert not dirty, f"{path.name} has outputs; strip them (nbstripout {path.relative_to(REPO)}):\n" + "\n".join(dirty)
    assert "widgets" not in notebook.metadata, f"{path.name} carries saved widget state; run nbstripout on it"


def readme() -> str:
    return (REPO / "README.md").read_text()


def setup_commands() -> list[str]:
    """The commands in the first code block of README's set-up section, comments removed."""
    section = re.search(r"^## Set up and run\n(.*?)(?=^## )", readme(), re.S | re.M)
    assert section, "README.md needs a '## Set up and run' section"
    block = re.search(r"```\w*\n(.*?)```", section.group(1), re.S)
    assert block, "README's set-up section needs a code block with the commands"
    lines = (line.split("#", 1)[0].strip() for line in block.group(1).splitlines())
    return [line for line in lines if line]


def test_readme_gives_exactly_the_two_commands_and_make_has_them():
    assert setup_commands() == ["make lab", "make test"]
    makefile = (REPO / "Makefile").read_text()
    for target in ("lab", "test"):
        assert re.search(rf"^{target}:", makefile, re.M), f"Makefile has no `{target}` target"
    # A dry run parses the Makefile and resolves both targets without installing anything.
    env = {**os.environ, "EXTRA": "cpu"}
    dry_run = subprocess.run(["make", "-n", "lab", "test"], cwd=REPO, env=env, capture_output=True, text=True)
    assert dry_run.returncode == 0, dry_run.stderr
    assert "jupyter lab" in dry_run.stdout and "--nbmake" in dry_run.stdout


def test_readme_notebook_map_lists_every_notebook():
    mapped = set(re.findall(r"^\|\s*`?(\d\d_\w+)", readme(), re.M))
    present = {path.stem for path in NOTEBOOKS}
    assert mapped == present, (
        f"in README only: {sorted(mapped - present)}; in notebooks/ only: {sorted(present - mapped)}"
    )


def test_ci_runs_make_test():
    run = REPO / ".ci" / "run"
    assert os.access(run, os.X_OK), ".ci/run must be executable"
    script = run.read_text()
    assert "set -euo pipefail" in script
    assert re.search(r"^time make test$", script, re.M), ".ci/run must run `make test` itself"


def test_precommit_hooks_strip_notebooks_and_use_the_pinned_ruff():
    config = yaml.safe_load((REPO / ".pre-commit-config.yaml").read_text())
    hooks = {hook["id"]: repo for repo in config["repos"] for hook in repo["hooks"]}
    assert {"nbstripout", "ruff-check", "ruff-format"} <= hooks.keys()
    dev = requirement_map(pyproject()["project"]["optional-dependencies"]["dev"], "dev extra")
    assert hooks["ruff-check"]["rev"] == "v" + dev["ruff"].removeprefix("==")


# -- the package's import graph ------------------------------------------------------------------------------

SRC = REPO / "src"
PACKAGE = "tinyformer"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted((SRC / PACKAGE).rglob("*.py"))}


def _is_type_checking_block(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def _import_targets(node: ast.Import | ast.ImportFrom, module: str, is_package: bool, known) -> set[str]:
    if isinstance(node, ast.Import):
        return {alias.name for alias in node.names}
    base = node.module or ""
    if node.level:  # a relative import: resolve it against the importing module's package
        package = module.split(".") if is_package else module.split(".")[:-1]
        base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
    # `from tinyformer import checkpoint` imports the module tinyformer.checkpoint; `from x import name`, x itself.
    return {f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names}


def _string_imports(tree: ast.Module, known) -> set[str]:
    """Modules named by string constants in a module that calls importlib.import_module or __import__: the
    imports a reader (and ruff) cannot see."""
    calls = [node for node in ast.walk(tree) if isinstance(node, ast.Call)]
    if not any(ast.unparse(call.func).split(".")[-1] in ("import_module", "__import__") for call in calls):
        return set()
    strings = {node.value for node in ast.walk(tree) if isinstance(node, ast.Constant) and isinstance(node.value, str)}
    return (strings & set(known)) - {PACKAGE}  # "tinyformer" alone is the program's name, never imported by name


def import_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    """{module: the package's modules it imports}. Every import counts wherever it stands, inside functions too: a
    function-level import is a cycle that waits for its first call (tinyformer.checkpoint's old ``__getattr__``
    forwarder to tinyformer.train). Only ``if TYPE_CHECKING:`` blocks are left out: they never run. So is the package
    ``__init__`` that importing a submodule runs first: each one here only maps or re-exports its own modules."""
    graph = {}
    for module, path in modules.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        targets: set[str] = set()
        pending: list[ast.AST] = [tree]
        while pending:
            node = pending.pop()
            for child in ast.iter_child_nodes(node):
                if _is_type_checking_block(child):
                    continue
                if isinstance(child, ast.Import | ast.ImportFrom):
                    targets |= _import_targets(child, module, path.name == "__init__.py", modules)
                pending.append(child)
        targets |= _string_imports(tree, modules)
        graph[module] = {target for target in targets if target in modules and target != module}
    return graph


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Each cycle found by a depth-first walk, as the path that closes it (a module importing itself, via others)."""
    cycles, done, path = [], set(), []

    def walk(module: str) -> None:
        path.append(module)
        for target in sorted(graph[module]):
            if target in path:
                cycles.append(path[path.index(target) :] + [target])
            elif target not in done:
                walk(target)
        path.pop()
        done.add(module)

    for module in sorted(graph):
        if module not in done:
            walk(module)
    return cycles


def test_import_cycles_finds_a_cycle_hidden_in_a_function_or_a_string():
    """What the check below rejects: a cycle closed by an import inside a function, or by importlib and a name."""
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert import_cycles(graph) == [["a", "b", "c", "a"]]
    assert import_cycles({"a": {"b"}, "b": set()}) == []
    lazy = ast.parse("def f():\n    from tinyformer import train\n")
    stringly = ast.parse("import importlib\nNAMES = ('tinyformer.serving.cli',)\nimportlib.import_module(NAMES[0])\n")
    known = {"tinyformer.train", "tinyformer.serving.cli"}
    assert _import_targets(lazy.body[0].body[0], "tinyformer.checkpoint", False, known) == {"tinyformer.train"}
    assert _string_imports(stringly, known) == {"tinyformer.serving.cli"}


def test_the_package_has_no_import_cycle():
    cycles = import_cycles(import_graph(package_modules()))
    assert not cycles, "import cycles among tinyformer's modules:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_cli_names_its_subcommand_modules_in_imports_not_strings():
    """cli.py imports each subcommand's module with an import statement (lazily or not), never by name through
    importlib: a string import hides the edge from readers and tools, and hid the cycle cli -> serving.cli -> cli."""
    tree = ast.parse((SRC / PACKAGE / "cli.py").read_text())
    assert not _string_imports(tree, package_modules())
    assert "importlib" not in {
        alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names
    }


@pytest.mark.slow
def test_every_module_imports_in_a_fresh_interpreter():
    """Each module of the package imports in a new process (one process for all, in sorted order): a cycle at
    import time would stop one with an ImportError on a partly initialised module."""
    names = sorted(name for name in package_modules() if not name.endswith(".__main__"))  # those run a command
    script = "import importlib, sys\nfor name in sys.argv[1:]:\n    importlib.import_module(name)\n"
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    done = subprocess.run([sys.executable, "-c", script, *names], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
