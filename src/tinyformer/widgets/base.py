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
    """Call ``fn`` once, ``delay`` seconds after the last of a burst of calls.

    Inside a running Jupyter kernel the call is scheduled on its event loop; without one (scripts,
    tests) it runs at once. Holding an arrow key on a slider thus costs one update, not one per tick.
    """

    def __init__(self, fn: Callable[[], None], delay: float = DEBOUNCE_SECONDS):
        self.fn, self.delay, self._pending = fn, delay, None

    def __call__(self, *_ignored) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.fn()
            return
        if self._pending is not None:
            self._pending.cancel()
        self._pending = loop.call_later(self.delay, self.fn)


def figure_png(fig: Figure, dpi: int = 72) -> bytes:
    buf = io.BytesIO()
    # No bbox_inches="tight" (it draws the figure twice); fast zlib level: the PNG is shown once, never stored.
    fig.savefig(buf, format="png", dpi=dpi, pil_kwargs={"compress_level": 1})
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
        self.image.value = figure_png(self.figure)
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
