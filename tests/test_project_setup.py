"""The project's set-up promises: pyproject and environment.yml agree, notebooks are stripped,
README's two commands exist as Makefile targets, and CI runs `make test`."""

from __future__ import annotations

import os
import re
import subprocess
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
