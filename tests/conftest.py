"""Suite-wide rules for prerequisites: what may be skipped, where, and with what reason.

- ``vllm`` tests are never skipped: `make` installs vLLM, so a failed import is an error everywhere.
- ``browser`` tests need the system Chromium and the ``playwright`` package. Outside CI they are
  skipped with a plain reason when either is missing; in CI (``CI=true``) that is an error.
- ``hub`` tests need JupyterHub's proxy, which `make install` puts in hub/node_modules (``npm ci``, Node.js 20+).
  Outside CI they are skipped with a plain reason when it is missing; in CI that is an error.
- ``gpu`` tests are skipped with a plain reason when no CUDA device is visible.
- In CI, a skip of a ``vllm``/``browser``/``hub`` test or a skip caused by a failed import (``importorskip``)
  is turned into a failure: nothing CI installs may be skipped silently.
"""

from __future__ import annotations

import functools
import importlib
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest
from filelock import FileLock

REPO = Path(__file__).resolve().parents[1]  # the repository's root: tests/..
CHROMIUM_DEFAULT = "/usr/bin/chromium"
NEVER_SKIPPED_IN_CI = ("vllm", "browser", "hub")
# One test worker at a time adds or removes accounts of this machine (`make unit` runs two workers).
ACCOUNTS_LOCK = FileLock(Path(tempfile.gettempdir()) / "tinyformer-test-accounts.lock")


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1")


def chromium_path() -> str | None:
    """$TINYFORMER_CHROMIUM, else Debian's /usr/bin/chromium, else `chromium` on PATH."""
    configured = os.environ.get("TINYFORMER_CHROMIUM")
    if configured:
        return configured if Path(configured).is_file() else None
    if Path(CHROMIUM_DEFAULT).is_file():
        return CHROMIUM_DEFAULT
    return shutil.which("chromium")


@functools.cache
def import_problem(module: str) -> str | None:
    """None when ``module`` imports, else the error (imported once per session: vLLM is slow)."""
    try:
        importlib.import_module(module)
    except Exception as err:  # a broken install raises more than ImportError (e.g. torchvision::nms)
        return f"{type(err).__name__}: {err}"
    return None


def vllm_problem() -> str | None:
    problem = import_problem("vllm")
    if problem:
        return f"`import vllm` failed ({problem}). Run `make test` (it installs vLLM) or see README troubleshooting."
    return None


def browser_problem() -> str | None:
    configured = os.environ.get("TINYFORMER_CHROMIUM")
    if configured and chromium_path() is None:
        return f"TINYFORMER_CHROMIUM={configured} is not a file: point it at a Chromium binary or unset it."
    if chromium_path() is None:
        return (
            f"Chromium not found at {CHROMIUM_DEFAULT} or on PATH: "
            "install Debian's `chromium` package to run the browser tests."
        )
    problem = import_problem("playwright.sync_api")
    if problem:
        return f"the `playwright` Python package does not import ({problem}); run `make test` to install it."
    return None


def hub_problem() -> str | None:
    from tinyformer.workshop.hub import PROXY_BIN

    proxy = REPO / "hub" / PROXY_BIN
    if not proxy.is_file():
        return f"JupyterHub's proxy {proxy} is missing: `make install` installs it with npm (needs Node.js 20+)."
    return None


@pytest.fixture(autouse=True)
def _prerequisites(request: pytest.FixtureRequest) -> None:
    """Check each marked test's prerequisites before it runs."""
    if request.node.get_closest_marker("vllm"):
        problem = vllm_problem()
        if problem:
            pytest.fail(problem, pytrace=False)
    for marker, problem_of in (("browser", browser_problem), ("hub", hub_problem)):
        if not request.node.get_closest_marker(marker):
            continue
        problem = problem_of()
        if problem and in_ci():
            pytest.fail(f"CI=true and the {marker} tests cannot run: {problem}", pytrace=False)
        if problem:
            pytest.skip(f"{marker} test skipped: {problem}")
    if request.node.get_closest_marker("gpu"):
        import torch

        if not torch.cuda.is_available():
            pytest.skip("needs an NVIDIA GPU; torch.cuda.is_available() is False on this machine")


@pytest.fixture(scope="session")
def chromium_executable() -> str:
    """Path of the system Chromium for Playwright's ``executable_path`` (never `playwright install`)."""
    path = chromium_path()
    if path is None:
        if in_ci():
            pytest.fail(browser_problem() or "Chromium missing", pytrace=False)
        pytest.skip(f"browser test skipped: {browser_problem()}")
    return path


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    """In CI, turn a skip that hides a missing install into a failure."""
    outcome = yield
    report = outcome.get_result()
    if not (in_ci() and report.skipped) or hasattr(report, "wasxfail"):
        return
    reason = str(report.longrepr[2]) if isinstance(report.longrepr, tuple) else str(report.longrepr)
    marked = [name for name in NEVER_SKIPPED_IN_CI if item.get_closest_marker(name)]
    import_skip = "could not import" in reason
    if marked or import_skip:
        why = f"marked {', '.join(marked)}" if marked else "a dependency failed to import"
        report.outcome = "failed"
        report.longrepr = f"CI=true forbids this skip ({why}): {reason}"


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread():
    """The test models are tiny: extra threads only wait on each other (4x slower on a busy 2-core box).
    Session-wide, so module fixtures and tests compute with the same thread count (bit-identical sums)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def foreign_http_server(tmp_path_factory):
    """(process, port): a real HTTP server that is not vLLM, in a process of its own, answering GET /health
    with 200 (it serves a folder holding a file called ``health``)."""
    import subprocess
    import sys
    import time

    import httpx

    from tinyformer.serving.server import free_port

    site = tmp_path_factory.mktemp("foreign")
    (site / "health").write_text("I am not vLLM\n")
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", str(site)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert process.poll() is None and time.monotonic() < deadline, "the foreign HTTP server did not start"
            time.sleep(0.05)
        yield process, port
    finally:
        process.kill()
        process.wait()


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook, which reads the xdist_group marks we add here
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under two workers (`make unit`: pytest-xdist, ``--dist loadgroup``), the tests of a module that share one
    of its module-scoped fixtures (most often a running vLLM server) go to the same worker, so the fixture is made
    once, as in a run without workers. Other tests, and tests marked ``spread`` (each starts servers of its own and
    shares only cheap fixtures), are spread one by one.

    Without ``tryfirst`` this ran after xdist had already read the marks (it turns them into a ``@group`` suffix of
    each test's id): every module-scoped server was started once per worker, and again whenever a worker came back
    to a module. pytest_runtest_setup below fails a run in which the groups are lost.

    Without pytest-xdist (``-p no:xdist``) there are no workers to group for, and no ``xdist_group`` marker to add
    (``--strict-markers`` would stop the collection)."""
    if not config.pluginmanager.hasplugin("xdist"):
        return
    for item in items:
        if item.get_closest_marker("spread"):
            continue
        if any(_module_scoped_here(item, name) for name in item.fixturenames):
            item.add_marker(pytest.mark.xdist_group(item.module.__name__))
    items[:] = _longest_first(items)


# The groups that took longest in the clean-clone runs of `make test` (setup included; 2026-12-06 to -08): structured
# outputs' server (113-189 s, it waits for the nano llama's training), the VLM under vLLM (95-110 s, its setup trains
# lesson 10's model when the checkpoint test has not), the hub (100 s), the browser tests (JupyterLab in Chromium,
# 90 s), the class server (85 s), nbgrader (75 s), pipeline parallel (4 starts). xdist hands out groups in the order
# they come (`make unit` passes --no-loadscope-reorder), so these go first and the run ends on short tests that either
# worker can take: no worker sits idle while the other finishes a long group. (The lesson checkpoints' two tests are
# ungrouped and marked slow, so they lead the ungrouped tests.)
# The autograded lesson that writes into artifacts is an ungrouped test of its own: it leads the ungrouped tests, or
# it is handed out near the end of the run (the collection order is alphabetical) and one worker sits idle while the
# other grades it (gw1 waited 59 s in the clean-clone run of 2026-12-07, 05:25, when it graded lesson 04, which trains
# nano for two minutes; lesson 05, graded since, takes under a minute).
LONGEST_UNGROUPED = ("test_autograding_a_lesson_that_saves_the_model_leaves_the_class_files_as_they_were",)
LONGEST_GROUPS = (
    "test_serving_structured",
    "test_vision_vllm",
    "test_hub",
    "test_browser_widgets",
    "test_workshop_server",
    "test_workshop_nbgrader",
    "test_serving_parallel",
)


def _longest_first(items: list[pytest.Item]) -> list[pytest.Item]:
    """The known longest groups, then the other groups (most tests first, as xdist's default order), then the
    ungrouped tests: the known longest, then those marked ``slow``, then the rest. Stable otherwise; every worker
    collects the same order."""
    groups: dict[str, list[pytest.Item]] = {}
    ungrouped = []
    for item in items:
        mark = item.get_closest_marker("xdist_group")
        (groups.setdefault(mark.args[0], []) if mark else ungrouped).append(item)

    def rank(name: str) -> tuple[int, int]:
        known = LONGEST_GROUPS.index(name) if name in LONGEST_GROUPS else len(LONGEST_GROUPS)
        return known, -len(groups[name])

    ungrouped.sort(
        key=lambda item: (item.originalname not in LONGEST_UNGROUPED, item.get_closest_marker("slow") is None)
    )
    return [item for name in sorted(groups, key=rank) for item in groups[name]] + ungrouped


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Fail a grouped test, before its fixtures start anything, in a two-worker run in which xdist dropped the
    groups (see the pytest pin in pyproject.toml): each module-scoped server would start once per worker."""
    if getattr(item.config.option, "loadgroup", False) and item.get_closest_marker("xdist_group"):
        if "@" not in item.nodeid:  # xdist's loadgroup appends "@<group>" to the id of each grouped test
            pytest.fail(
                "pytest-xdist ignored this test's xdist_group: this pytest and pytest-xdist disagree on where a "
                "test's id lives; install the versions pyproject.toml allows (make install)",
                pytrace=False,
            )


def _module_scoped_here(item: pytest.Item, fixture: str) -> bool:
    definitions = item._fixtureinfo.name2fixturedefs.get(fixture, ())
    return any(d.scope == "module" and d.baseid == item.nodeid.split("::")[0] for d in definitions)


# ----- other accounts of this machine (the hub's learners and its vLLM service) -------------------------------


@pytest.fixture
def shared_tmp():
    """A fresh temporary folder every account can enter (pytest's own tmp_path sits in a root-only folder)."""
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="tinyformer-accounts-"))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def new_account(shared_tmp):
    """``new_account()`` adds a throw-away account of this machine (``useradd``) with a home of its own in
    ``shared_tmp``; returns its pwd entry. Every account made is removed after the test. Needs root."""
    import pwd
    import secrets
    import subprocess

    if os.geteuid() != 0:
        pytest.skip("creates accounts of this machine: needs root")
    names = []

    def make() -> pwd.struct_passwd:
        name = f"tf-test-{secrets.token_hex(4)}"
        home = shared_tmp / name
        command = ["useradd", "--no-create-home", "--home-dir", str(home), "--shell", "/usr/sbin/nologin", "-U", name]
        with ACCOUNTS_LOCK:  # useradd gives up ("cannot lock /etc/passwd") while another worker's holds the lock
            subprocess.run(command, check=True, capture_output=True)
        names.append(name)
        entry = pwd.getpwnam(name)
        home.mkdir(mode=0o700)
        os.chown(home, entry.pw_uid, entry.pw_gid)
        return entry

    yield make
    for name in names:
        with ACCOUNTS_LOCK:
            subprocess.run(["userdel", name], check=True, capture_output=True)


def interpreter_for_every_account() -> list[str]:
    """A command prefix under which every account can run this Python, or [] when it already can.

    Some boxes keep the interpreter the virtualenv points at under a folder only root may enter (pyenv's under
    /root, mode 0700). Real hubs install it where learners reach it (their servers run from it); a test that runs
    something as another account runs it in a mount namespace of its own instead, where that folder is a fresh
    tmpfs (mode 0755) holding only the interpreter's subtree, bind-mounted back. Nothing outside changes."""
    real = Path(os.path.realpath(sys.executable))
    closed = next((folder for folder in reversed(real.parents) if not folder.stat().st_mode & 0o001), None)
    if closed is None:
        return []
    inner = real.relative_to(closed).parts[0]
    script = (
        'stage=$(mktemp -d) && mount --bind "$1/$2" "$stage" && mount -t tmpfs -o mode=0755 tmpfs "$1" && '
        'mkdir "$1/$2" && mount --move "$stage" "$1/$2" && rmdir "$stage" && shift 2 && exec "$@"'
    )
    return ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", script, "sh", str(closed), inner]


def vllm_greedy(llm, prompts: list, max_tokens: int) -> list[list[int]]:
    """The new token ids a ``vllm.LLM`` (tinyformer.serving.offline_llm) gives each prompt (text or token ids),
    greedy, ``max_tokens`` each however early EOS comes, every prompt added before the first engine step."""
    from vllm import SamplingParams

    greedy = SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True)
    requests = [p if isinstance(p, str) else {"prompt_token_ids": p} for p in prompts]
    return [list(out.outputs[0].token_ids) for out in llm.generate(requests, greedy, use_tqdm=False)]


# ----- the course tokenizer, random models and an export folder, shared by many test modules -------------------


@pytest.fixture(scope="module")
def tokenizer():
    """The course tokenizer (the shipped corpus's vocabulary), built once per test module."""
    from tinyformer.tokenizer import build_tokenizer

    return build_tokenizer()


@pytest.fixture
def export_config(tmp_path):
    """A folder holding only the config.json of a small GPT-2 export (nano's sizes, vocabulary 55): enough for the
    refusals that read the config before anything starts."""
    config = {"model_type": "gpt2", "vocab_size": 55, "n_positions": 128, "n_embd": 64, "n_layer": 2, "n_head": 2}
    (tmp_path / "config.json").write_text(json.dumps(config))
    return tmp_path


def random_model(config, seed: int = 0, std: float = 0.3):
    """An untrained model (seeded) whose every parameter is drawn from N(0, std^2), in eval mode. Larger than GPT-2's
    init, whose near-uniform logits would make greedy generation trivial and hide a weight copied to the wrong place."""
    import torch

    from tinyformer.model import Transformer

    torch.manual_seed(seed)
    model = Transformer(config)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, std)
    return model.eval()


# ----- models for the engine and speculative-decoding tests ---------------------------------------------------


def spread_weights(model):
    """Scale a random model's matrices up so its best and second-best logits lie far apart: kernels that sum in
    another order (vLLM's, or a multi-token pass) then cannot flip a greedy choice. Returns the model, in eval mode."""
    import torch

    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(40.0 / p.shape[1] ** 0.5)
    return model.eval()


def spread_model(seed: int = 0, *, vocab_size: int, n_layer: int = 2):
    """Nano's shape (128 positions, 64 wide, 2 heads) with seeded weights spread by :func:`spread_weights`."""
    import torch

    from tinyformer.config import ModelConfig
    from tinyformer.model import Transformer

    torch.manual_seed(seed)
    model = Transformer(ModelConfig(vocab_size=vocab_size, n_positions=128, n_embd=64, n_layer=n_layer, n_head=2))
    return spread_weights(model)


def noisy_copy(model, scale: float, seed: int):
    """A copy of ``model`` with seeded noise on its weights: a draft that agrees with it often, not always."""
    import copy

    import torch

    noisy = copy.deepcopy(model)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in noisy.parameters():
            p.add_(scale * p.std() * torch.randn(p.shape, generator=generator))
    return noisy.eval()
