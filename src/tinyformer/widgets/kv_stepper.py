"""KV cache in action: step through generation token by token and watch the cache grow."""

from __future__ import annotations

from dataclasses import dataclass

import ipywidgets as w
import matplotlib
import numpy as np
import torch
from matplotlib.transforms import blended_transform_factory

from tinyformer import memory
from tinyformer.kv_cache import KVCache
from tinyformer.model import eval_mode
from tinyformer.widgets.base import LiveFigureWidget, dropdown, number, on_cpu, slider


@dataclass(frozen=True)
class KVStep:
    token_id: int  # the token chosen at this step
    cache_len: int  # tokens cached after this step's forward pass
    key_shapes: list[tuple[int, ...]]  # per layer, [B, nh, S, hd]
    nbytes: int  # KVCache.nbytes after this step
    keys: list[np.ndarray]  # per layer, the cached keys [nh, S, hd] (batch row 0)
    attention: list[np.ndarray]  # per layer, the newest token's weights over the cache [nh, S]


@dataclass(frozen=True)
class KVTrace:
    prompt: list[int]
    steps: list[KVStep]
    n_layer: int
    n_head: int
    head_dim: int
    bytes_per_token: int

    @property
    def tokens(self) -> list[int]:
        return [s.token_id for s in self.steps]


@torch.inference_mode()
def trace_generation(model, prompt_ids: list[int], max_new_tokens: int = 12) -> KVTrace:
    """Greedy generation with a KVCache, recording the cache and the newest token's attention at each step.

    Step 0 is the prefill (the whole prompt enters the cache); every later step feeds one token, which
    adds one row per layer to the keys and to the values. The same tokens as ``generate(..., use_cache=True)``.
    """
    config = on_cpu(model).config
    if not prompt_ids or len(prompt_ids) + max_new_tokens > config.n_positions + 1:
        raise ValueError(
            f"need a non-empty prompt and prompt + max_new_tokens - 1 <= n_positions={config.n_positions}; "
            f"got {len(prompt_ids)} + {max_new_tokens}."
        )
    with eval_mode(model):  # dropout off while tracing; the model's mode is restored after
        cache = KVCache(config.n_layer)
        ids = torch.tensor([prompt_ids])  # [1, T]
        steps = []
        for _ in range(max_new_tokens):
            logits, attentions = model(ids, cache=cache, return_attention=True)  # weights [1, nh, T, S] per layer
            next_id = int(logits[0, -1].argmax())
            steps.append(
                KVStep(
                    token_id=next_id,
                    cache_len=len(cache),
                    key_shapes=cache.shapes(),
                    nbytes=cache.nbytes,
                    keys=[k[0].float().numpy().copy() for k in cache.keys],
                    attention=[a[0, :, -1, :].float().numpy().copy() for a in attentions],
                )
            )
            ids = torch.tensor([[next_id]])  # decode: only the newest token goes in
    dtype = next(model.parameters()).dtype
    per_token = memory.kv_bytes_per_token(config.n_layer, config.n_kv_head, config.head_dim, dtype)
    return KVTrace(list(prompt_ids), steps, config.n_layer, config.n_head, config.head_dim, per_token)


class KVCacheStepper(LiveFigureWidget):
    css_class = "tf-kv"

    def __init__(self, trace: KVTrace, labels: list[str] | None = None):
        self.trace = trace
        all_ids = trace.prompt + trace.tokens
        self.labels = labels if labels is not None else [str(i) for i in all_ids]
        self.step = slider(w.IntSlider, "generation step", "tf-step", min=0, max=len(trace.steps) - 1, value=0)
        self.layer = dropdown("layer", "tf-layer", options=list(range(trace.n_layer)), value=0)
        self.head = dropdown("head", "tf-head", options=list(range(trace.n_head)), value=0)
        self._finish([self.step, self.layer, self.head])

    def numbers_html(self) -> str:
        t, s = self.trace, self.trace.steps[self.step.value]
        formula = t.bytes_per_token * s.cache_len
        new = "prefill: the whole prompt" if self.step.value == 0 else "decode: one new token"
        return "".join(
            [
                number("this step", new, "tf-step-kind", self.step.value),
                number("tokens in the cache", str(s.cache_len), "tf-cache-len", s.cache_len),
                number(
                    "keys (and values) per layer",
                    " x ".join(map(str, s.key_shapes[0])),
                    "tf-key-shape",
                    s.key_shapes[0][2],
                ),
                number(
                    f"cache bytes (formula: {t.bytes_per_token:,} B/token x {s.cache_len})",
                    f"{s.nbytes:,} B",
                    "tf-cache-bytes",
                    s.nbytes,
                ),
                number("chosen token", self.labels[len(t.prompt) + self.step.value], "tf-token", s.token_id),
            ]
        ) + ("" if s.nbytes == formula else "<b>cache bytes differ from the formula!</b>")

    def build(self, fig) -> None:
        """Three panels sized for the LAST step (the longest cache), so a step only fills in more of them."""
        t = self.trace
        lens = [x.cache_len for x in t.steps]
        longest = lens[-1]
        self.grow, self.keys, self.attn = fig.subplots(1, 3, width_ratios=[2, 2, 3])

        self.cache_bars = self.grow.bar(range(len(lens)), [x.nbytes for x in t.steps], color="lightsteelblue")
        self.grow.plot(range(len(lens)), [t.bytes_per_token * n for n in lens], "k--", lw=1, label="formula")
        self.grow.set_xticks(range(0, len(lens), max(1, len(lens) // 5)))
        self.grow.set_xlabel("step")
        self.grow.set_ylabel("KV cache bytes")
        self.grow.set_title("grows by one token per step", fontsize=9)
        self.grow.legend(fontsize=7)

        # Rows not yet in the cache are NaN, drawn blank: the image fills in row by row.
        self.key_rows = np.full((longest, t.head_dim), np.nan)  # [S_max, hd]
        cmap = matplotlib.colormaps["coolwarm"].with_extremes(bad="white")
        self.key_image = self.keys.imshow(self.key_rows, aspect="auto", cmap=cmap, interpolation="nearest")
        self.newest_row = self.keys.axhline(0, color="k", lw=1)
        self.keys.set_xlabel("channel")
        self.keys.set_ylabel("cached token")

        self.weight_bars = self.attn.bar(range(longest), np.zeros(longest), color="tab:green")
        # Token names are texts, not tick labels: they appear step by step, and ticks that change would make
        # every step redraw the frames (see FigureRenderer).
        self.attn.set_xticks(range(longest), [""] * longest)
        below_axis = blended_transform_factory(self.attn.transData, self.attn.transAxes)
        self.token_names = [
            self.attn.text(
                i,
                -0.04,
                "",
                transform=below_axis,
                rotation=60,
                rotation_mode="anchor",
                ha="right",
                va="center",
                fontsize=7,
            )
            for i in range(longest)
        ]
        self.attn.set_ylim(0, 1)

    def update_figure(self) -> None:
        t, k, layer, head = self.trace, self.step.value, self.layer.value, self.head.value
        s = t.steps[k]
        for i, bar in enumerate(self.cache_bars):
            bar.set_color("tab:blue" if i == k else "lightsteelblue")

        all_keys = t.steps[-1].keys[layer][head]  # [S_max, hd]: one colour scale for every step
        self.key_rows[:] = np.nan
        self.key_rows[: s.cache_len] = s.keys[layer][head]  # [S, hd]
        self.key_image.set_data(self.key_rows)
        self.key_image.set_clim(all_keys.min(), all_keys.max())
        self.newest_row.set_ydata([s.cache_len - 1.5] * 2)
        self.keys.set_title(f"layer {layer} head {head} keys [S={s.cache_len}, hd]", fontsize=9)

        weights = s.attention[layer][head]  # [S]
        for i, bar in enumerate(self.weight_bars):
            bar.set_height(weights[i] if i < len(weights) else 0.0)
        for i, name in enumerate(self.token_names):
            name.set_text(self.labels[i] if i < len(weights) else "")  # tokens not generated yet stay unnamed
        self.attn.set_title(f"newest token's attention over the cache (sums to {weights.sum():.2f})", fontsize=9)


def kv_cache_stepper(
    model, tokenizer=None, prompt: str | list[int] = "the cat near the dogs", max_new_tokens: int = 10
) -> KVCacheStepper:
    """Step through greedy generation of ``model`` from ``prompt``: cache shapes, bytes and attention."""
    prompt_ids = tokenizer.encode(prompt) if isinstance(prompt, str) else list(prompt)
    trace = trace_generation(model, prompt_ids, max_new_tokens)
    labels = tokenizer.convert_ids_to_tokens(trace.prompt + trace.tokens) if tokenizer is not None else None
    return KVCacheStepper(trace, labels)
