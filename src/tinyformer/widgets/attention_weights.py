"""Attention weights viewer: pick the token that looks, see how its attention is spread over the tokens it may see."""

from __future__ import annotations

from dataclasses import dataclass
from html import escape

import ipywidgets as w
import matplotlib
import numpy as np
import torch
from matplotlib.ticker import FixedFormatter

from tinyformer.model import eval_mode
from tinyformer.widgets.base import LiveFigureWidget, dropdown, number, on_cpu, slider


@dataclass(frozen=True)
class AttentionRow:
    query: int  # the position of the token that looks
    weights: np.ndarray  # [T] its weights over every position; exactly 0 after ``query`` (the causal mask)
    strongest: int  # the position it looks at most

    @property
    def visible(self) -> int:
        """How many tokens this one may see: itself and the ones before it."""
        return self.query + 1


@torch.inference_mode()
def attention_weights(model, ids: list[int]) -> np.ndarray:
    """Every layer's attention weights for one sentence: [n_layer, n_head, T, T] (row = query, column = key)."""
    if not ids:
        raise ValueError("the sentence has no tokens; type at least one word.")
    with eval_mode(on_cpu(model)):  # the model checks the length itself: at most n_positions tokens
        _, attentions = model(torch.tensor([ids]), return_attention=True)  # per layer [1, nh, T, T]
    return torch.stack([a[0] for a in attentions]).float().numpy()  # [L, nh, T, T]


def attention_row(weights: np.ndarray, layer: int, head: int, query: int) -> AttentionRow:
    """Row ``query`` of one head's [T, T] weights: what the widget shows (pure; the browser test checks it)."""
    row = weights[layer, head, query].copy()  # [T]
    return AttentionRow(query=query, weights=row, strongest=int(row.argmax()))


class AttentionWeightsViewer(LiveFigureWidget):
    css_class = "tf-weights"

    def __init__(self, model, tokenizer, sentence: str = "the cat near the dogs sleeps ."):
        self.model, self.tokenizer = model, tokenizer
        self.sentence = w.Text(
            value=sentence, description="sentence", continuous_update=False, style={"description_width": "initial"}
        )
        self.sentence.add_class("tf-sentence")
        self.error = ""  # why the last sentence typed could not be used, if it could not
        self._load(sentence)
        self.query = slider(w.IntSlider, "token that looks", "tf-query", min=0, max=len(self.words) - 1, value=0)
        self.layer = dropdown("layer", "tf-weights-layer", options=list(range(model.config.n_layer)), value=0)
        self.head = dropdown("head", "tf-weights-head", options=list(range(model.config.n_head)), value=0)
        self.sentence.observe(self._new_sentence, names="value")
        self._finish([self.query, self.layer, self.head, self.sentence])

    def _load(self, sentence: str) -> None:
        ids = self.tokenizer.encode(sentence)
        self.weights = attention_weights(self.model, ids)  # [L, nh, T, T]
        self.words = self.tokenizer.convert_ids_to_tokens(ids)

    def _new_sentence(self, change) -> None:
        """A new sentence means a new forward pass and new axes sizes (rare: only on Enter in the text box).
        The redraw itself follows from the debounced observer every control has."""
        try:
            self._load(change["new"])
        except ValueError as error:
            self.error = f"could not use that sentence: {error} Still showing the previous one."
            return
        self.error = ""
        self.figure.clear()
        self.build(self.figure)
        self.query.max = len(self.words) - 1  # ipywidgets clamps the value into the new range

    def current(self) -> AttentionRow:
        return attention_row(self.weights, self.layer.value, self.head.value, self.query.value)

    def numbers_html(self) -> str:
        row, words = self.current(), self.words
        seen = ", ".join(f"{words[j]} {row.weights[j]:.2f}" for j in range(row.visible))
        future = float(row.weights[row.visible :].sum())
        return (f"<b class='tf-error'>{escape(self.error)}</b>" if self.error else "") + "".join(
            [
                number("token that looks", f"{row.query}: {words[row.query]}", "tf-query-token", row.query),
                number("tokens it may see (itself and earlier)", str(row.visible), "tf-visible", row.visible),
                number("its weights", seen, "tf-row", " ".join(f"{x:.6f}" for x in row.weights)),
                number("sum of its weights", f"{row.weights.sum():.4f}", "tf-row-sum", f"{row.weights.sum():.6f}"),
                number("weight on later tokens (masked)", f"{future:g}", "tf-future", f"{future:g}"),
                number("looks most at", words[row.strongest], "tf-strongest", row.strongest),
            ]
        )

    def build(self, fig) -> None:
        """Left: the whole [T, T] weight matrix with the chosen row outlined; right: that row as bars."""
        T = len(self.words)
        self.matrix_ax, self.row_ax = fig.subplots(1, 2, width_ratios=[1, 1.4])
        cmap = matplotlib.colormaps["Blues"].with_extremes(bad="whitesmoke")
        self.matrix = self.matrix_ax.imshow(np.zeros((T, T)), cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
        self.row_outline = self.matrix_ax.add_patch(
            matplotlib.patches.Rectangle((-0.5, -0.5), T, 1, fill=False, edgecolor="tab:red", lw=2)
        )
        for ax in (self.matrix_ax, self.row_ax):
            ax.set_xticks(range(T), self.words, rotation=60, fontsize=7)
        self.matrix_ax.set_yticks(range(T), self.words, fontsize=7)
        self.matrix_ax.set_xlabel("looked at (key)")
        self.matrix_ax.set_ylabel("looks (query)")
        self.bars = self.row_ax.bar(range(T), np.zeros(T), color="tab:blue")
        self.row_ax.set_ylim(0, 1)
        self.row_ax.set_ylabel("attention weight")

    def update_figure(self) -> None:
        layer, head, row = self.layer.value, self.head.value, self.current()
        T = len(self.words)
        future = np.triu(np.ones((T, T), dtype=bool), k=1)  # [T, T], True above the diagonal: masked
        self.matrix.set_data(np.ma.masked_where(future, self.weights[layer, head]))
        self.row_outline.set_y(row.query - 0.5)
        self.matrix_ax.set_title(f"layer {layer} head {head}: every row sums to 1", fontsize=9)
        for j, bar in enumerate(self.bars):
            bar.set_height(row.weights[j])
            bar.set_color("tab:red" if j == row.query else "tab:blue" if j < row.visible else "lightgray")
        names = [word if j < row.visible else "" for j, word in enumerate(self.words)]
        self.row_ax.xaxis.set_major_formatter(FixedFormatter(names))  # the masked future is not named
        self.row_ax.set_title(f'"{self.words[row.query]}" (token {row.query}) spreads its attention over', fontsize=9)


def attention_weights_viewer(
    model, tokenizer, sentence: str = "the cat near the dogs sleeps ."
) -> AttentionWeightsViewer:
    """Slider for the token that looks, dropdowns for layer and head: its row of attention weights."""
    return AttentionWeightsViewer(model, tokenizer, sentence)
