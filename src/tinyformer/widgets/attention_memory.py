"""Attention memory explorer (lesson 06): the n x n score matrix (grows as n^2) next to the KV cache (grows as n).

Boundary: the widget and the numbers it draws (from :mod:`tinyformer.memory`). The attention weights themselves,
row by row, are :mod:`tinyformer.widgets.attention_weights`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache
from types import SimpleNamespace

import ipywidgets as w
import numpy as np

from tinyformer import memory
from tinyformer.widgets.base import LiveFigureWidget, dropdown, log2_x_axis, log_y_axis, number, slider

SEQ_LENS = [2**k for k in range(7, 18)]  # 128 ... 131072
MEASURE_LIMIT_BYTES = 32 * memory.MiB  # measure the current setting live only when its scores are this small
THIS_MACHINE = "this machine's RAM"


def this_machine_bytes() -> int | None:
    """Physical memory of this machine, or None where the OS does not say (os.sysconf is POSIX-only)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def device_choices() -> dict[str, int]:
    """Devices whose memory the explorer can mark: the shipped GPUs and this machine."""
    choices = {name: gpu.memory_bytes for name, gpu in memory.gpus().items()}
    ram = this_machine_bytes()
    if ram:
        choices[THIS_MACHINE] = ram
    return choices


@dataclass(frozen=True)
class ExplorerNumbers:
    scores_per_layer: int  # one layer's [B, nh, n, n] matrix
    scores_all_layers: int  # kept for backward in training (one at a time in inference)
    kv_cache: int  # all layers, K and V, n tokens
    kv_per_token: int
    device_bytes: int
    longest_fitting_n: int  # the largest n whose per-layer score matrix fits in the device


def explorer_numbers(seq_len, n_head, n_layer, batch, dtype, head_dim, device_bytes) -> ExplorerNumbers:
    """The explorer's numbers for one setting (pure; what the widget shows and the browser test checks)."""
    scores = memory.attention_scores_bytes(seq_len, n_head, batch, dtype)
    kv_per_token = memory.kv_bytes_per_token(n_layer, n_head, head_dim, dtype)
    per_n2 = batch * n_head * memory.dtype_bytes(dtype)  # score bytes = per_n2 x n^2
    return ExplorerNumbers(
        scores_per_layer=scores,
        scores_all_layers=n_layer * scores,
        kv_cache=batch * seq_len * kv_per_token,
        kv_per_token=kv_per_token,
        device_bytes=device_bytes,
        longest_fitting_n=int((device_bytes / per_n2) ** 0.5),
    )


@lru_cache(maxsize=64)
def measured_scores(seq_len: int, n_head: int, batch: int, dtype: str, head_dim: int) -> int | None:
    """Score-matrix bytes measured on this machine (naive attention's peak minus its output), cached;
    None when the setting is too big to run quickly."""
    if dtype not in ("fp32", "bf16"):
        return None
    if memory.attention_scores_bytes(seq_len, n_head, batch, dtype) > MEASURE_LIMIT_BYTES:
        return None
    m = memory.measure_attention("naive", seq_len, n_head, batch, head_dim, dtype, device="cpu")
    return m.peak_bytes - m.retained_bytes


class AttentionExplorer(LiveFigureWidget):
    css_class = "tf-attention"

    def __init__(
        self, seq_len=1024, n_head=12, n_layer=12, batch=1, dtype="fp16", head_dim=64, device="H100 80 GB", measure=True
    ):
        self.measure = measure
        self.devices = device_choices()
        self.seq_len = slider(w.SelectionSlider, "sequence length n", "tf-seq-len", options=SEQ_LENS, value=seq_len)
        self.n_head = slider(w.IntSlider, "heads", "tf-heads", min=1, max=64, value=n_head)
        self.n_layer = slider(w.IntSlider, "layers", "tf-layers", min=1, max=96, value=n_layer)
        self.batch = slider(w.IntSlider, "batch", "tf-batch", min=1, max=64, value=batch)
        self.dtype = dropdown("dtype", "tf-dtype", options=["fp32", "bf16", "fp16", "fp8"], value=dtype)
        self.head_dim = dropdown("head size", "tf-head-dim", options=[32, 64, 96, 128], value=head_dim)
        self.device = dropdown("device", "tf-device", options=list(self.devices), value=device)
        self._finish([self.seq_len, self.n_head, self.n_layer, self.batch, self.dtype, self.head_dim, self.device])

    def current(self) -> ExplorerNumbers:
        return explorer_numbers(
            self.seq_len.value,
            self.n_head.value,
            self.n_layer.value,
            self.batch.value,
            self.dtype.value,
            self.head_dim.value,
            self.devices[self.device.value],
        )

    def numbers_html(self) -> str:
        x, f = self.current(), memory.format_bytes
        fits = "fits in" if x.scores_per_layer <= x.device_bytes else "does NOT fit in"
        return "".join(
            [
                number(
                    "score matrix, one layer (B x heads x n x n)",
                    f(x.scores_per_layer),
                    "tf-scores",
                    x.scores_per_layer,
                ),
                number(
                    "score matrices, all layers (training keeps them)",
                    f(x.scores_all_layers),
                    "tf-scores-all",
                    x.scores_all_layers,
                ),
                number("KV cache for n tokens (2 x layers x heads x head size)", f(x.kv_cache), "tf-kv", x.kv_cache),
                number(
                    f"one layer's scores {fits} {self.device.value} ({f(x.device_bytes)}); longest n that fits",
                    f"{x.longest_fitting_n:,}",
                    "tf-longest-n",
                    x.longest_fitting_n,
                ),
            ]
        )

    def build(self, fig) -> None:
        """Two panels (linear and log memory axis), each with the same lines; their data comes later."""
        n = np.array(SEQ_LENS, dtype=float)
        self.panels = []
        for ax, scale in zip(fig.subplots(1, 2), ("linear", "log"), strict=True):
            panel = SimpleNamespace(ax=ax, scale=scale)
            (panel.scores,) = ax.plot(n, n, color="tab:red", label="score matrix (one layer) ~ n²")
            (panel.kv,) = ax.plot(n, n, color="tab:blue", label="KV cache (all layers) ~ n")
            panel.device = ax.axhline(1, color="gray", ls="--", lw=1)
            panel.longest = ax.axvline(1, color="gray", ls=":", lw=1)
            (panel.point,) = ax.plot([1], [1], "o", color="tab:red")
            (panel.measured,) = ax.plot([1], [1], "kx", ms=10)
            log2_x_axis(ax, SEQ_LENS)
            ax.set_xlim(SEQ_LENS[0] / 1.25, SEQ_LENS[-1] * 1.25)  # fixed: the lines move, the axis does not
            if scale == "log":
                log_y_axis(ax)
            ax.set_xlabel("sequence length n (tokens)")
            ax.set_ylabel("GiB")
            ax.set_title(f"{scale} memory axis")
            self.panels.append(panel)

    def update_figure(self) -> None:
        x, n_now = self.current(), self.seq_len.value
        n = np.array(SEQ_LENS, dtype=float)
        scores = x.scores_per_layer / n_now**2 * n**2 / memory.GiB  # grows as n^2
        kv = x.kv_per_token * self.batch.value * n / memory.GiB  # grows as n
        device = x.device_bytes / memory.GiB
        measured = None
        if self.measure:
            setting = (n_now, self.n_head.value, self.batch.value, self.dtype.value, self.head_dim.value)
            measured = measured_scores(*setting)
        for p in self.panels:
            p.scores.set_ydata(scores)
            p.kv.set_ydata(kv)
            p.device.set_ydata([device, device])
            p.device.set_label(self.device.value)
            p.longest.set_xdata([x.longest_fitting_n, x.longest_fitting_n])
            p.point.set_data([n_now], [x.scores_per_layer / memory.GiB])
            p.measured.set_visible(measured is not None)
            p.measured.set_label("measured here (naive)" if measured is not None else "_hidden")
            if measured is not None:
                p.measured.set_data([n_now], [measured / memory.GiB])
            top = max(scores.max(), kv.max())
            if p.scale == "log":
                p.ax.set_ylim(min(scores.min(), kv.min()) / 2, max(top, device) * 2)
            else:
                p.ax.set_ylim(0, top * 1.05)
        self.panels[1].ax.legend(fontsize=7, loc="upper left")  # rebuilt: the device's name may have changed


def attention_explorer(**kwargs) -> AttentionExplorer:
    """Sliders for n, heads, layers, batch, dtype: score-matrix bytes (n²) beside KV-cache bytes (n)."""
    return AttentionExplorer(**kwargs)
