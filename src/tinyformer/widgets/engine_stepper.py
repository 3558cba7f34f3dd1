"""The engine at work, step by step (lesson 13): a slider over the steps an ``Engine(record_steps=True)`` ran.

Each step shows the block pool coloured by the request holding each block (block 0 is the null block; grey
blocks are free but still hold a cached prefix; white ones are empty), the running and waiting queues in order
(each running request marked with what it runs: a prefill chunk of n tokens or one decode), and a timeline of
the whole run with the step marked, where preemptions and prefix-cache hits happened. The pictures are drawn from
``tinyformer.engine.recorder.StepSnapshot``: pure functions (``pool_colours``, ``queue_cells``) turn a snapshot
into what is drawn, and the tests read them back.
"""

from __future__ import annotations

import ipywidgets as w
import numpy as np
from matplotlib.collections import PatchCollection
from matplotlib.colors import to_rgba
from matplotlib.patches import Rectangle

from tinyformer.engine import Engine
from tinyformer.engine.block_manager import NULL_BLOCK_ID
from tinyformer.engine.recorder import StepSnapshot
from tinyformer.figures import request_colour
from tinyformer.widgets.base import LiveFigureWidget, keep_still, number, slider

NULL_COLOUR = to_rgba("black")
EMPTY_COLOUR = to_rgba("white")
CACHED_FREE_COLOUR = to_rgba("0.78")  # free, but its keys and values can still be hit by a later request
NO_BLOCK = (0.0, 0.0, 0.0, 0.0)  # grid cells past the last block: not drawn
PREFILL_COLOUR, DECODE_COLOUR = "tab:orange", "tab:blue"
POOL_COLUMNS = 8  # blocks per row of the pool picture


def pool_grid_shape(num_blocks: int) -> tuple[int, int]:
    """(rows, columns) of the pool picture: POOL_COLUMNS blocks per row, block i at row i // columns."""
    columns = min(POOL_COLUMNS, num_blocks)
    return -(-num_blocks // columns), columns


def pool_colours(snap: StepSnapshot) -> np.ndarray:
    """[rows, columns, 4] RGBA, one cell per block: the null block black, a held block its (first) holder's colour,
    a free block grey when it still holds a cached prefix, else white."""
    rows, columns = pool_grid_shape(snap.num_blocks)
    cells = np.zeros((rows * columns, 4))
    cells[:] = NO_BLOCK
    cells[: snap.num_blocks] = EMPTY_COLOUR
    cells[NULL_BLOCK_ID] = NULL_COLOUR
    for block_id in snap.cached_free:
        cells[block_id] = CACHED_FREE_COLOUR
    for block_id, holders in snap.owners().items():
        cells[block_id] = request_colour(holders[0])
    return cells.reshape(rows, columns, 4)


def pool_labels(snap: StepSnapshot) -> list[str]:
    """The text on each block: its holders ("r3", or "r3+r5" for a shared prefix block), "null", or ""."""
    labels = [""] * snap.num_blocks
    labels[NULL_BLOCK_ID] = "null"
    for block_id, holders in snap.owners().items():
        labels[block_id] = "+".join(f"r{s}" for s in holders)
    return labels


def hit_blocks(snap: StepSnapshot) -> list[int]:
    """Blocks reused from the prefix cache by the requests admitted in this step (their first blocks)."""
    return [block for seq_id, n in snap.prefix_hits.items() for block in snap.block_tables[seq_id][:n]]


def queue_cells(snap: StepSnapshot) -> dict[str, list[tuple[int, str]]]:
    """The two queues in order, each request with what it does this step: "P12" (a prefill chunk of 12 tokens),
    "D" (one decode), "" (nothing scheduled: waiting, or running with the step's budget spent)."""
    runs = {s.seq_id: (f"P{s.tokens}" if s.prefill else "D") for s in snap.scheduled}
    return {
        "running": [(seq_id, runs.get(seq_id, "")) for seq_id in snap.running],
        "waiting": [(seq_id, "") for seq_id in snap.waiting],
    }


def step_summary(snap: StepSnapshot) -> str:
    decodes = f"{snap.decodes} decode{'' if snap.decodes == 1 else 's'}"
    parts = [f"step {snap.step}: {snap.prefill_tokens} prefill tokens, {decodes}"]
    hits = sum(snap.prefix_hits.values())
    if hits:
        parts.append(f"{hits} cached block{'' if hits == 1 else 's'} reused")
    if snap.preempted:
        parts.append("preempted " + ", ".join(f"r{s}" for s in snap.preempted))
    return "; ".join(parts)


class EngineStepper(LiveFigureWidget):
    css_class = "tf-engine"
    figsize = (12, 3.8)

    def __init__(self, snapshots: list[StepSnapshot]):
        if not snapshots:
            raise ValueError(
                "no steps to show: build the engine with Engine(..., record_steps=True) and run generate() first."
            )
        self.snapshots = snapshots
        self.num_requests = 1 + max(max((*s.running, *s.waiting), default=0) for s in snapshots)
        self.widest_queue = max(max(len(s.running), len(s.waiting)) for s in snapshots)
        self.step = slider(w.IntSlider, "engine step", "tf-engine-step", min=0, max=len(snapshots) - 1, value=0)
        self._finish([self.step])

    @property
    def snapshot(self) -> StepSnapshot:
        return self.snapshots[self.step.value]

    def numbers_html(self) -> str:
        s = self.snapshot
        ids = " ".join
        tables = "; ".join(f"r{q}: {list(s.block_tables[q])}" for q in s.running) or "none"
        usable = s.num_blocks - 1
        return "".join(
            [
                number("step", f"{s.step} of {len(self.snapshots) - 1}", "tf-eng-step", s.step),
                number("running (oldest first)", ids(f"r{q}" for q in s.running) or "none", "tf-eng-running",
                       ids(map(str, s.running))),
                number("waiting (front first)", ids(f"r{q}" for q in s.waiting) or "none", "tf-eng-waiting",
                       ids(map(str, s.waiting))),
                number(f"blocks used (of {usable} usable)", str(s.blocks_used), "tf-eng-blocks", s.blocks_used),
                number("block tables", tables, "tf-eng-tables", tables),
                number("this step", step_summary(s).split(": ", 1)[1], "tf-eng-run",
                       f"{s.prefill_tokens} {s.decodes}"),
            ]
        )  # fmt: skip

    def build(self, fig) -> None:
        pool_ax, queue_ax, time_ax = fig.subplots(1, 3, width_ratios=[3, 3, 4])
        first = self.snapshots[0]
        rows, columns = pool_grid_shape(first.num_blocks)
        self.pool_image = pool_ax.imshow(pool_colours(first), interpolation="nearest", aspect="auto")
        outlines = [Rectangle((i % columns - 0.5, i // columns - 0.5), 1, 1) for i in range(first.num_blocks)]
        pool_ax.add_collection(PatchCollection(outlines, facecolor="none", edgecolor="0.35", lw=0.8, zorder=3))
        pool_ax.set_xticks(range(columns), [f"+{c}" for c in range(columns)], fontsize=7)
        pool_ax.set_yticks(range(rows), [str(r * columns) for r in range(rows)], fontsize=7)
        pool_ax.set_ylabel("block id", fontsize=8)
        pool_ax.set_title("KV block pool (grey: free, still cached)", fontsize=9)
        self.block_texts = [
            pool_ax.text(i % columns, i // columns, "", ha="center", va="center", fontsize=7)
            for i in range(first.num_blocks)
        ]
        (self.hit_marks,) = pool_ax.plot([], [], "*", ms=9, mfc="gold", mec="k", mew=0.6, ls="none")

        width = self.widest_queue
        self.queue_colours = np.zeros((2, width, 4))
        self.queue_image = queue_ax.imshow(self.queue_colours, interpolation="nearest", aspect="auto")
        # cell borders above the image (a grid would lie under it: the image is redrawn over the frames)
        queue_ax.vlines(np.arange(0.5, width - 1), -0.5, 1.5, color="white", lw=2, zorder=3)
        queue_ax.axhline(0.5, color="white", lw=2, zorder=3)
        queue_ax.set_xticks(range(width), [str(i) for i in range(width)], fontsize=7)
        queue_ax.set_yticks([0, 1], ["running", "waiting"], fontsize=8)
        queue_ax.set_xlabel("position in the queue (running: newest last, preempted first)", fontsize=7)
        self.queue_texts = [
            [queue_ax.text(c, r, "", ha="center", va="center", fontsize=7) for c in range(width)] for r in range(2)
        ]
        self.queue_ax = queue_ax

        steps = np.arange(len(self.snapshots))
        prefill = np.array([s.prefill_tokens for s in self.snapshots])
        decode = np.array([s.decodes for s in self.snapshots])
        time_ax.fill_between(steps, 0, prefill, step="mid", color=PREFILL_COLOUR, alpha=0.7, label="prefill tokens")
        time_ax.fill_between(steps, prefill, prefill + decode, step="mid", color=DECODE_COLOUR, alpha=0.7,
                             label="decodes")  # fmt: skip
        time_ax.plot(steps, [s.blocks_used for s in self.snapshots], "k-", lw=1, label="blocks used")
        time_ax.axhline(first.num_blocks - 1, color="k", lw=0.8, ls="--", label="usable blocks")
        top = max(int((prefill + decode).max()), first.num_blocks)
        preempt_steps = [s.step for s in self.snapshots if s.preempted]
        hit_steps = [s.step for s in self.snapshots if sum(s.prefix_hits.values())]
        time_ax.plot(preempt_steps, [top * 1.05] * len(preempt_steps), "rv", ms=5, ls="none", label="preemption")
        time_ax.plot(hit_steps, [top * 1.12] * len(hit_steps), "*", ms=7, mfc="gold", mec="k", mew=0.5, ls="none",
                     label="prefix-cache hit")  # fmt: skip
        time_ax.set_ylim(0, top * 1.2)
        time_ax.set_xlim(-0.5, len(self.snapshots) - 0.5)
        time_ax.set_xlabel("step")
        time_ax.legend(fontsize=6, loc="upper right", bbox_to_anchor=(1, 0.86), ncols=2)
        # The whole run is drawn once, with the frames; only the step's dotted line and the title move.
        keep_still(*(a for a in time_ax.get_children() if a is not time_ax.title))
        self.now_line = time_ax.axvline(0, color="k", lw=1.5, ls=":")
        self.time_ax = time_ax

    def update_figure(self) -> None:
        s = self.snapshot
        columns = pool_grid_shape(s.num_blocks)[1]
        self.pool_image.set_data(pool_colours(s))
        for text, label in zip(self.block_texts, pool_labels(s), strict=True):
            text.set_text(label)
            text.set_color("white" if label == "null" else "black")
        hits = hit_blocks(s)
        self.hit_marks.set_data([b % columns + 0.3 for b in hits], [b // columns - 0.25 for b in hits])

        self.queue_colours[:] = NO_BLOCK
        for row, name in enumerate(("running", "waiting")):
            cells = queue_cells(s)[name]
            for column, text in enumerate(self.queue_texts[row]):
                if column < len(cells):
                    seq_id, runs = cells[column]
                    self.queue_colours[row, column] = request_colour(seq_id)
                    text.set_text(f"r{seq_id} {runs}" if runs else f"r{seq_id}")
                else:
                    text.set_text("")
        self.queue_image.set_data(self.queue_colours)
        preempted = "; preempted " + ", ".join(f"r{q}" for q in s.preempted) if s.preempted else ""
        self.queue_ax.set_title(f"queues (P n: prefill chunk, D: decode){preempted}", fontsize=9)
        self.now_line.set_xdata([s.step, s.step])
        self.time_ax.set_title(step_summary(s), fontsize=8)


def engine_stepper(engine: Engine) -> EngineStepper:
    """Step through what ``engine`` recorded (build it with ``record_steps=True``, then run ``generate``)."""
    if engine.snapshots is None:
        raise ValueError("this engine recorded no steps: build it with Engine(..., record_steps=True).")
    return EngineStepper(engine.snapshots)
