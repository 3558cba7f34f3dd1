"""The widgets in a real browser: JupyterLab (headless, loopback, token) driven through the system Chromium.

For notebooks 02 (attention weights viewer), 05 (KV cache stepper), 06 (all three memory widgets) and 13 (the
engine stepper) the test runs every cell up to the notebook's last widget (nbmake runs them all), moves sliders with
the keyboard, and checks that the numbers on screen become what the pure functions compute. It prints the time from
the key press to the new numbers (and to the new figure) for each widget and writes them to
test-results/widget_latency_NN.json. It asserts no time: the box is shared, and the 200 ms target (median key press to
new figure) is checked by `python benchmarks/widget_latency.py --browser`, which runs this test on its own and reads
those files. On failure a screenshot is saved under test-results/.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import time

import httpx
import pytest
import torch
from conftest import REPO

from tinyformer import ModelConfig, Transformer, build_tokenizer, memory
from tinyformer.paths import artifacts_dir
from tinyformer.serving.server import free_port
from tinyformer.train import load_or_train
from tinyformer.widgets import attention_row, attention_weights, explorer_numbers

pytestmark = [pytest.mark.browser, pytest.mark.slow]

NOTEBOOKS = REPO / "notebooks"
RESULTS = REPO / "test-results"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def widget_notebooks() -> list[str]:
    """The lessons with widgets: 02 (attention weights), 05 (KV cache stepper), 06 (memory), 13 (engine stepper)."""
    return [next(NOTEBOOKS.glob(f"{number}_*.ipynb")).name for number in ("02", "05", "06", "13")]


WIDGET_MAKERS = (
    "attention_weights_viewer",
    "kv_cache_stepper",
    "attention_explorer",
    "budget_calculator",
    "engine_stepper",
)


def through_last_widget(path) -> dict:
    """The notebook up to the cell that makes its last widget: this test is about the widgets, and the cells after
    them (lesson 05's 24-second timing at GPT-2 small's size, lesson 13's comparison with vLLM) run under nbmake."""
    notebook = json.loads(path.read_text())
    makes_widget = re.compile(r"\b(" + "|".join(WIDGET_MAKERS) + r")\(")
    cells = notebook["cells"]
    last = max(
        i
        for i, cell in enumerate(cells)
        if cell["cell_type"] == "code" and makes_widget.search("".join(cell["source"]))
    )
    return {**notebook, "cells": cells[: last + 1]}


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """JupyterLab on 127.0.0.1 with a random token, serving COPIES of the notebooks (autosave must never
    write outputs into the repository), stopped (its whole process group) afterwards."""
    root = tmp_path_factory.mktemp("lab")
    for name in widget_notebooks():
        (root / name).write_text(json.dumps(through_last_widget(NOTEBOOKS / name)))
    # The lessons load notebook 04's checkpoint. Notebook 05 checks what the trained model learned (subject-verb
    # agreement), so the lab gets the real nano checkpoint: the suite's own (trained once with the nano recipe,
    # as notebook 04 would, and shared with the serving tests), copied so nothing here can change it.
    artifacts = root / "artifacts"
    artifacts.mkdir()
    load_or_train("nano", progress=False)
    shutil.copy(artifacts_dir() / "nano.pt", artifacts / "nano.pt")
    token, port = secrets.token_hex(16), free_port()
    env = {
        **os.environ,
        "TINYFORMER_ARTIFACTS": str(artifacts),
        "JUPYTER_CONFIG_DIR": str(root / ".jupyter"),
    }
    log = (root / "lab.log").open("w")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "jupyterlab",
            "--no-browser",
            "--ServerApp.ip=127.0.0.1",
            f"--ServerApp.port={port}",
            f"--IdentityProvider.token={token}",
            f"--ServerApp.root_dir={root}",
            "--LabApp.expose_app_in_browser=True",
            "--ServerApp.open_browser=False",
            *(["--allow-root"] if os.geteuid() == 0 else []),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{url}/api/status", params={"token": token}, timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"JupyterLab did not start; its log:\n{(root / 'lab.log').read_text()[-3000:]}")
            time.sleep(0.5)
        yield {"url": url, "token": token}
    finally:
        stop_group(process)
        log.close()


def stop_group(process: subprocess.Popen) -> None:
    """SIGTERM the server's process group (it and the kernels it started), then SIGKILL what is left."""
    for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 5)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


@pytest.fixture(scope="module")
def browser(chromium_executable):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium_executable, args=CHROMIUM_ARGS)
        yield b
        b.close()


NOTEBOOK_PANEL = """name => Array.from(window.jupyterapp.shell.widgets('main'))
    .find(w => w.context && w.context.path === name && w.sessionContext)"""


def open_and_run(page, lab, name: str) -> None:
    """Open notebook ``name`` in a fresh JupyterLab workspace (so no other notebook is restored beside it),
    run every cell, and fail with the first error output."""
    page.goto(f"{lab['url']}/lab/workspaces/{name.split('_')[0]}/tree/{name}?reset&token={lab['token']}")
    find = f"({NOTEBOOK_PANEL})({json.dumps(name)})"
    page.wait_for_function(f"window.jupyterapp && {find} && {find}.sessionContext.session", timeout=120_000)
    page.wait_for_function(f"{find}.sessionContext.kernelDisplayStatus === 'idle'", timeout=120_000)
    page.evaluate(
        f"""() => {{
            const nb = {find};
            window.jupyterapp.shell.activateById(nb.id);
            return window.jupyterapp.commands.execute('notebook:run-all-cells');
        }}"""
    )
    # Done when every code cell has an execution count and the kernel is idle again.
    page.wait_for_function(
        f"""() => {{
            const nb = {find};
            const cells = nb.content.widgets.filter(c => c.model.type === 'code');
            const errors = nb.node.querySelectorAll(
                '.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]');
            for (const e of errors) {{
                if (e.textContent.includes('Traceback') || e.textContent.includes('Error')) return true;
            }}
            return nb.sessionContext.kernelDisplayStatus === 'idle' && cells.every(c => c.model.executionCount);
        }}""",
        timeout=600_000,
        polling=500,
    )
    errors = page.locator('.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]')
    for i in range(errors.count()):
        text = errors.nth(i).inner_text()
        assert "Traceback" not in text and "Error" not in text, f"{name}: a cell failed:\n{text[-2000:]}"


def value_of(page, css: str) -> str:
    return page.locator(f"b.{css}").first.get_attribute("data-value")


PRESSES = 7  # right, left, right, ... right: the widget ends one step to the right of where it started


def press_and_time(page, slider_css: str, key: str, watch_css: str, figure_css: str) -> dict[str, float]:
    """Press ``key`` then its opposite, PRESSES times in all, on the slider's handle; the median (and the
    slowest) time from the key press to the new numbers and to the new figure, measured inside the page."""
    opposite = {"ArrowRight": "ArrowLeft", "ArrowLeft": "ArrowRight"}[key]
    times = [
        press_once(page, slider_css, key if i % 2 == 0 else opposite, watch_css, figure_css) for i in range(PRESSES)
    ]
    numbers, figure = [t[0] for t in times], [t[1] for t in times]
    return {
        "presses": PRESSES,
        "numbers_ms_median": statistics.median(numbers),
        "figure_ms_median": statistics.median(figure),
        "figure_ms_max": max(figure),
    }


def press_once(page, slider_css: str, key: str, watch_css: str, figure_css: str) -> tuple[float, float]:
    """Focus the slider's handle, press ``key``, and return (ms to new numbers, ms to new figure),
    both measured inside the page from the keydown event."""
    page.evaluate(
        """([watchCss, figureCss]) => {
            const t = window.__tf = {key: null, numbers: null, figure: null};
            document.addEventListener('keydown', () => { if (t.key === null) t.key = performance.now(); },
                                      {capture: true, once: true});
            const numbers = document.querySelector(watchCss), figure = document.querySelector(figureCss);
            const before = [numbers.innerHTML, figure.getAttribute('src')];
            new MutationObserver((_, obs) => {
                if (numbers.innerHTML !== before[0] && t.numbers === null) {
                    t.numbers = performance.now();
                    obs.disconnect();
                }
            }).observe(numbers, {subtree: true, childList: true, characterData: true, attributes: true});
            new MutationObserver((_, obs) => {
                if (figure.getAttribute('src') !== before[1] && t.figure === null) {
                    t.figure = performance.now();
                    obs.disconnect();
                }
            }).observe(figure, {attributes: true});
        }""",
        [watch_css, figure_css],
    )
    handle = page.locator(f".{slider_css} .noUi-handle").first
    handle.focus()
    page.keyboard.press(key)
    page.wait_for_function("window.__tf.numbers !== null && window.__tf.figure !== null", timeout=30_000)
    t = page.evaluate("window.__tf")
    return t["numbers"] - t["key"], t["figure"] - t["key"]


def readout(page, slider_css: str) -> str:
    return page.locator(f".{slider_css} .widget-readout").first.inner_text().strip()


def report(name: str, timings: dict[str, dict[str, float]]) -> None:
    """Print the times and write them where `benchmarks/widget_latency.py --browser` reads them."""
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"widget_latency_{name.split('_')[0]}.json").write_text(json.dumps(timings, indent=1))
    print()
    for widget, t in timings.items():
        print(
            f"{name} {widget}: over {t['presses']} key presses, numbers {t['numbers_ms_median']:.0f} ms, figure "
            f"{t['figure_ms_median']:.0f} ms (median; slowest {t['figure_ms_max']:.0f} ms) after the key press"
        )


@pytest.mark.parametrize("name", widget_notebooks())
def test_widgets_respond_to_the_keyboard_with_the_pure_functions_numbers(browser, lab, name, capsys):
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    try:
        open_and_run(page, lab, name)
        timings = CHECKS[name[:2]](page)
        with capsys.disabled():  # the latencies are part of the report, also without -s
            report(name, timings)
    except BaseException:
        RESULTS.mkdir(exist_ok=True)
        page.screenshot(path=str(RESULTS / f"browser_{name}.png"), full_page=True)
        raise
    finally:
        page.close()


def check_notebook_06(page) -> dict[str, dict[str, float]]:
    timings = {}
    # Attention explorer: n 4096 -> 8192 with the right arrow; the notebook set heads 32, layers 32, bf16, hd 128.
    before = int(value_of(page, "tf-scores"))
    timings["attention explorer"] = press_and_time(
        page, "tf-seq-len", "ArrowRight", ".tf-attention-numbers", "img.tf-attention-figure"
    )
    n = int(readout(page, "tf-seq-len"))
    expected = explorer_numbers(n, 32, 32, 1, "bf16", 128, memory.gpus()["H100 80 GB"].memory_bytes)
    assert n == 8192
    assert int(value_of(page, "tf-scores")) == expected.scores_per_layer == 4 * before
    assert int(value_of(page, "tf-kv")) == expected.kv_cache

    timings["KV cache stepper"] = check_kv_stepper(page)

    # Budget calculator: Llama-3.1-8B on an L4, max_model_len 8192 -> 16384.
    timings["GPU budget calculator"] = press_and_time(
        page, "tf-max-model-len", "ArrowRight", ".tf-budget-numbers", "img.tf-budget-figure"
    )
    plan = memory.plan_serving("Llama-3.1-8B", "L4 24 GB", max_model_len=int(readout(page, "tf-max-model-len")))
    message = page.locator("pre.tf-message").first
    assert message.get_attribute("data-tokens") == str(plan.capacity.tokens)
    assert message.inner_text().strip() == plan.message
    return timings


def check_kv_stepper(page) -> dict[str, float]:
    """Step 0 -> 1 adds one token to the cache (prompt "the cat near the dogs": 5 tokens, nano model, fp32)."""
    timing = press_and_time(page, "tf-step", "ArrowRight", ".tf-kv-numbers", "img.tf-kv-figure")
    nano = ModelConfig.preset("nano", vocab_size=len(build_tokenizer()))
    assert value_of(page, "tf-cache-len") == "6"
    assert int(value_of(page, "tf-cache-bytes")) == 6 * memory.kv_bytes_per_token(
        nano.n_layer, nano.n_head, nano.head_dim, "fp32"
    )
    return timing


def check_notebook_02(page) -> dict[str, dict[str, float]]:
    """Token 0 -> 1 with the right arrow: the row shown is the model's, and sees exactly two tokens."""
    timing = press_and_time(page, "tf-query", "ArrowRight", ".tf-weights-numbers", "img.tf-weights-figure")
    torch.manual_seed(0)  # notebook 02's own untrained model, built the same way
    tokenizer = build_tokenizer()
    model = Transformer(ModelConfig.preset("nano", vocab_size=len(tokenizer))).eval()
    expected = attention_row(attention_weights(model, tokenizer.encode("the cat near the dogs sleeps .")), 0, 0, 1)
    assert value_of(page, "tf-visible") == "2"
    shown = [float(x) for x in value_of(page, "tf-row").split()]
    assert shown == pytest.approx(expected.weights.tolist(), abs=1e-6)
    assert value_of(page, "tf-future") == "0"
    return {"attention weights viewer": timing}


def check_notebook_05(page) -> dict[str, dict[str, float]]:
    return {"KV cache stepper": check_kv_stepper(page)}


def check_notebook_13(page) -> dict[str, dict[str, float]]:
    """Step 0 -> 1 of the engine stepper: the queues and block tables on screen are those of the same engine run
    here (the notebook's trace, rebuilt the same way, on the same nano checkpoint)."""
    from tinyformer.data import Corpus
    from tinyformer.engine import Engine

    timing = press_and_time(page, "tf-engine-step", "ArrowRight", ".tf-engine-numbers", "img.tf-engine-figure")
    model, tokenizer = load_or_train("nano", progress=False)
    words = [tokenizer(" ".join(s))["input_ids"] for s in Corpus(seed=3).sentences(800)]
    text = [t for sentence in words for t in sentence]  # as notebook 13's first cell
    prompts = [text[:24] + text[100 + 10 * i : 104 + 10 * i] for i in range(3)]
    prompts += [text[300:340]] + [text[400 + 30 * i : 410 + 30 * i + 3 * i] for i in range(4)]
    engine = Engine(model, num_blocks=13, block_size=8, max_num_seqs=6, max_num_batched_tokens=32, record_steps=True)
    engine.generate(prompts, 24)
    step = engine.snapshots[1]
    assert value_of(page, "tf-eng-step") == "1"
    assert value_of(page, "tf-eng-running") == " ".join(map(str, step.running))
    assert value_of(page, "tf-eng-waiting") == " ".join(map(str, step.waiting))
    assert value_of(page, "tf-eng-tables") == "; ".join(f"r{q}: {list(step.block_tables[q])}" for q in step.running)
    return {"engine stepper": timing}


CHECKS = {"02": check_notebook_02, "05": check_notebook_05, "06": check_notebook_06, "13": check_notebook_13}
