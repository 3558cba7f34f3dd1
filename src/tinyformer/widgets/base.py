"""What every widget shares: one figure updated in place and sent as PNG, debounced updates, a static fallback."""

from __future__ import annotations

import asyncio
import base64
import io
import time
from collections.abc import Callable
from html import escape

import ipywidgets as w
from matplotlib.figure import Figure

DEBOUNCE_SECONDS = 0.03  # slider events closer together than this are merged into one update


class Debouncer:
    """Call ``fn`` at once for a lone event, and once more after a burst of them.

    Inside a running Jupyter kernel, the first call runs ``fn`` straight away (a single key press must not
    wait); calls that arrive within ``delay`` seconds of the last run are merged into one trailing run,
    scheduled on the kernel's event loop. Holding an arrow key on a slider thus costs about one update per
    ``delay``, not one per tick, and the last value is always drawn. Without an event loop (scripts, tests)
    every call runs at once.
    """

    def __init__(self, fn: Callable[[], None], delay: float = DEBOUNCE_SECONDS):
        self.fn, self.delay, self._pending, self._last_run = fn, delay, None, -float("inf")

    def __call__(self, *_ignored) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.fn()
            return
        if self._pending is not None:
            self._pending.cancel()
            self._pending = None
        if loop.time() - self._last_run >= self.delay:
            self._run(loop)
        else:
            self._pending = loop.call_later(self.delay, self._run, loop)

    def _run(self, loop) -> None:
        self._pending = None
        self.fn()
        self._last_run = loop.time()  # measured after fn: events queued while it ran count as one burst


class FigureRenderer:
    """Draws one figure to PNG again and again, re-drawing its frames only when they change (blitting).

    Most of a frame's cost is text: tick labels, axis labels, legends. A slider move usually changes lines,
    bars, images, titles and legends but not the axes' limits, ticks or labels, so the frames (axes
    background, spines, ticks and their labels) are drawn once and copied; only the rest is drawn on top.
    The frames are drawn again when anything they show changes (see ``frames_key``). This is matplotlib's own
    blitting recipe (``animated`` artists, ``copy_from_bbox``, ``restore_region``, ``draw_artist``); what the
    eye sees is the full drawing, except that lines and bars are drawn over the spines rather than under.
    """

    def __init__(self, fig: Figure, dpi: int = 72):
        from matplotlib.backends.backend_agg import FigureCanvasAgg

        fig.set_dpi(dpi)
        self.figure, self.canvas = fig, FigureCanvasAgg(fig)
        self.background, self.key = None, None

    def png(self) -> bytes:
        moving = [(ax, moving_artists(ax)) for ax in self.figure.axes]
        for _, artists in moving:
            for artist in artists:
                artist.set_animated(True)  # canvas.draw() leaves animated artists out
        key = frames_key(self.figure)
        if key != self.key:
            self.canvas.draw()
            self.background, self.key = self.canvas.copy_from_bbox(self.figure.bbox), key
        else:
            self.canvas.restore_region(self.background)
        for ax, artists in moving:
            for artist in sorted(artists, key=lambda a: a.get_zorder()):
                ax.draw_artist(artist)
        return rgba_png(self.canvas)


def moving_artists(ax) -> list:
    """What a slider may move: everything in the axes but its background, spines, the two axes and what
    ``keep_still`` marked."""
    frame = {ax.patch, *ax.spines.values(), ax.xaxis, ax.yaxis}
    return [a for a in ax.get_children() if a not in frame and not getattr(a, STILL, False)]


STILL = "_tf_still"


def keep_still(*artists) -> None:
    """Draw these artists with the frames, once, instead of on every update: for what ``build`` makes and no update
    ever changes (a whole-run timeline, its legend). They lie under everything that moves."""
    for artist in artists:
        setattr(artist, STILL, True)


def frames_key(fig: Figure) -> tuple:
    """Everything the frames show; when it changes they are drawn again (limits, scales, ticks, labels)."""
    return tuple(
        (
            ax.get_position().bounds,
            ax.get_visible(),
            ax.get_xlim(),
            ax.get_ylim(),
            ax.get_xscale(),
            ax.get_yscale(),
            ax.get_xlabel(),
            ax.get_ylabel(),
            tuple(ax.get_xticks()),
            tuple(ax.get_yticks()),
            tuple(t.get_text() for t in ax.get_xticklabels()),
            tuple(t.get_text() for t in ax.get_yticklabels()),
        )
        for ax in fig.axes
    )


def rgba_png(canvas) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    # fast zlib level: the PNG is shown once, never stored
    Image.frombuffer("RGBA", canvas.get_width_height(), canvas.buffer_rgba()).save(buf, "png", compress_level=1)
    return buf.getvalue()


class LiveFigureWidget:
    """Controls + an HTML panel of numbers + a figure, updated (debounced) when a control changes.

    The figure, its axes and its artists (lines, bars, images) are made once by ``build(fig)``; each update
    only moves them (``update_figure()``: new data, limits, labels). Re-creating axes and ticks on every
    slider move costs more than drawing them, and the update must reach the screen within 200 ms.

    Subclasses build ``self.controls`` (a list of widgets), implement ``numbers_html()`` (cheap: shown
    first), ``build(fig)`` and ``update_figure()``, and call ``self._finish(controls)`` at the end of
    ``__init__``.
    """

    css_class = "tf-widget"
    figsize = (10, 3.4)

    def _finish(self, controls: list[w.Widget]) -> None:
        self.controls = controls
        self.numbers = w.HTML(layout=w.Layout(min_height="3em"))
        self.numbers.add_class(f"{self.css_class}-numbers")
        self.image = w.Image(format="png", layout=w.Layout(max_width="100%"))
        self.image.add_class(f"{self.css_class}-figure")
        self.ui = w.VBox(
            [
                w.HBox(controls[:4], layout=w.Layout(flex_flow="row wrap")),
                w.HBox(controls[4:], layout=w.Layout(flex_flow="row wrap")),
                self.numbers,
                self.image,
            ]
        )
        self.ui.add_class(self.css_class)
        self.figure = Figure(figsize=self.figsize)
        self.build(self.figure)
        # fixed margins: layout engines ("tight", "constrained") re-measure every text on every draw
        self.figure.subplots_adjust(left=0.07, right=0.98, bottom=0.2, top=0.88, wspace=0.3)
        self.renderer = FigureRenderer(self.figure)
        self.last_update_seconds = 0.0
        self._debounced = Debouncer(self.refresh)
        for control in controls:
            control.observe(self._debounced, names="value")
        self.refresh()

    def refresh(self) -> None:
        """Recompute the numbers, then move the figure's artists and send the new PNG."""
        start = time.perf_counter()
        self.numbers.value = self.numbers_html()
        self.update_figure()
        self.image.value = self.renderer.png()
        self.last_update_seconds = time.perf_counter() - start

    def numbers_html(self) -> str:
        raise NotImplementedError

    def build(self, fig: Figure) -> None:
        """Create the axes and artists once (their data is filled in by ``update_figure``)."""
        raise NotImplementedError

    def update_figure(self) -> None:
        """Move the artists made by ``build`` to the controls' current values."""
        raise NotImplementedError

    def _repr_mimebundle_(self, **kwargs):
        """The live widget for front ends that run widgets; its current figure as PNG for the others."""
        bundle = self.ui._repr_mimebundle_(**kwargs)
        bundle["image/png"] = base64.b64encode(self.image.value).decode("ascii")
        return bundle


def slider(cls, description: str, css: str, **kwargs):
    """A slider that only reports a value when released (or on each key press), labelled for the keyboard."""
    control = cls(description=description, continuous_update=False, style={"description_width": "initial"}, **kwargs)
    control.add_class(css)
    return control


def dropdown(description: str, css: str, **kwargs) -> w.Dropdown:
    control = w.Dropdown(description=description, style={"description_width": "initial"}, **kwargs)
    control.add_class(css)
    return control


def number(label: str, value: str, css: str, data: int | float | str) -> str:
    """One labelled number in the numbers panel; ``data-value`` carries the exact value for tests. Text is
    escaped: tokens such as ``<unk>`` or ``<|endoftext|>`` must show, not vanish as unknown HTML tags."""
    label, value, data = escape(str(label)), escape(str(value)), escape(str(data))
    return f'<div>{label}: <b class="{css}" data-value="{data}">{value}</b></div>'


def on_cpu(model):
    """The widgets draw from a model on the CPU (their inputs and numpy views live there); say so clearly."""
    if model.device.type != "cpu":
        raise ValueError(
            f"the widgets run the model on the CPU, and this one is on {model.device}. Pass a CPU copy: "
            "copy.deepcopy(model).cpu() (the tiny lesson models draw instantly on the CPU)."
        )
    return model


def short_count(x: float) -> str:
    """128 -> '128', 4096 -> '4k', 131072 -> '128k' (plain text: mathtext labels are slow to draw)."""
    if x >= 1024 and x % 1024 == 0:
        return f"{int(x) // 1024}k"
    return f"{x:g}"


def log2_x_axis(ax, values: list[int]) -> None:
    """A base-2 log x axis with a plain label on every other power of two and no minor ticks."""
    from matplotlib.ticker import FixedLocator, NullLocator

    ax.set_xscale("log", base=2)
    ticks = values[::2]
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.set_xticklabels([short_count(t) for t in ticks])
    ax.xaxis.set_minor_locator(NullLocator())


def log_y_axis(ax) -> None:
    """A log y axis labelled with plain numbers (1e-3 style) and no minor ticks."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullLocator

    ax.set_yscale("log")
    ax.yaxis.set_major_locator(LogLocator(base=10, numticks=6))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda y, _: f"{y:g}"))
    ax.yaxis.set_minor_locator(NullLocator())
