"""GPU budget calculator: will vLLM start this model on this GPU, with how much KV cache, and if not, why.

Vision-language models (by Hugging Face id) also show their image tokens per image, how many maximal images
one request and the whole KV cache hold, and how many dummy images vLLM's start-up profiling runs."""

from __future__ import annotations

from functools import cache

import ipywidgets as w

from tinyformer import memory, vllm_rules
from tinyformer.widgets.base import LiveFigureWidget, dropdown, log2_x_axis, log_y_axis, number, slider

CPU_BACKEND = "CPU (vLLM CPU backend)"
TINY_MODEL = "tinyformer micro (this course)"
MAX_MODEL_LENS = [2**k for k in range(7, 18)]  # 128 ... 131072
PALETTE = {
    "weights": "tab:orange",
    "activations (est.)": "tab:purple",
    "overhead (est.)": "tab:gray",
    "KV cache": "tab:blue",
    "not used": "whitesmoke",
}


@cache
def tiny_model_spec() -> memory.ModelSpec:
    """The micro preset with the course tokenizer's vocabulary: the calculator's course model (the serving lessons
    serve nano, half its width: ``serving.prepare.lesson_export``)."""
    from tinyformer.config import ModelConfig
    from tinyformer.tokenizer import build_tokenizer

    config = ModelConfig.preset("micro", vocab_size=len(build_tokenizer()))
    return memory.ModelSpec.from_tinyformer(config, name=TINY_MODEL)


def model_choices() -> dict[str, memory.ModelSpec]:
    """The course's model, the real text models by name, the vision-language models by Hugging Face id."""
    return {TINY_MODEL: tiny_model_spec(), **memory.real_models(), **memory.vision_models()}


class BudgetCalculator(LiveFigureWidget):
    css_class = "tf-budget"

    def __init__(
        self,
        model="Llama-3.1-8B",
        gpu="L4 24 GB",
        dtype="bf16",
        gpu_memory_utilization=0.9,
        max_model_len=8192,
        tensor_parallel_size=1,
        cpu_offload_gb=0,
        kv_cache_memory_bytes=2_621_440,
    ):
        self.models = model_choices()
        self.model = dropdown("model", "tf-model", options=list(self.models), value=model)
        self.gpu = dropdown("GPU", "tf-gpu", options=[*memory.gpus(), CPU_BACKEND], value=gpu)
        self.dtype = dropdown("weights", "tf-weights-dtype", options=list(memory.DTYPE_BYTES), value=dtype)
        self.utilization = slider(
            w.FloatSlider,
            "gpu_memory_utilization",
            "tf-util",
            min=0.5,
            max=0.99,
            step=0.01,
            value=gpu_memory_utilization,
        )
        self.max_model_len = slider(
            w.SelectionSlider, "max_model_len", "tf-max-model-len", options=MAX_MODEL_LENS, value=max_model_len
        )
        self.tp = dropdown("tensor parallel GPUs", "tf-tp", options=[1, 2, 4, 8], value=tensor_parallel_size)
        self.offload = slider(w.IntSlider, "cpu_offload_gb", "tf-offload", min=0, max=64, value=cpu_offload_gb)
        self.kv_bytes = w.BoundedIntText(
            description="CPU: --kv-cache-memory-bytes",
            value=kv_cache_memory_bytes,
            min=0,
            max=2**40,
            style={"description_width": "initial"},
        )
        self.kv_bytes.add_class("tf-kv-bytes")
        self._finish(
            [
                self.model,
                self.gpu,
                self.dtype,
                self.utilization,
                self.max_model_len,
                self.tp,
                self.offload,
                self.kv_bytes,
            ]
        )

    def plan(self) -> memory.ServingPlan:
        on_cpu = self.gpu.value == CPU_BACKEND
        return memory.plan_serving(
            self.models[self.model.value],
            None if on_cpu else self.gpu.value,
            dtype=self.dtype.value,
            gpu_memory_utilization=self.utilization.value,
            max_model_len=self.max_model_len.value,
            tensor_parallel_size=self.tp.value,
            cpu_offload_gb=self.offload.value,
            kv_cache_memory_bytes=self.kv_bytes.value if on_cpu else None,
        )

    def numbers_html(self) -> str:
        plan, f = self.plan(), memory.format_bytes
        fix = memory.cheapest_fix(plan)
        tokens = plan.capacity.tokens if plan.ok else -1
        rows = [
            number("weights per GPU", f(plan.weights_on_gpu), "tf-weights", plan.weights_on_gpu),
            number("KV budget per GPU", f(max(plan.kv_budget, 0)), "tf-kv-budget", plan.kv_budget),
            number("KV per token", f"{plan.bytes_per_token:,} B", "tf-kv-per-token", plan.bytes_per_token),
            f'<pre class="tf-message" data-tokens="{tokens}" style="white-space: pre-wrap">{plan.message}</pre>',
        ]
        if plan.model.vision is not None:
            rows.extend(image_rows(plan))
        if fix is not None:
            rows.append(
                f'<div>cheapest fix: <b class="tf-fix">{fix.change}</b> (cost: {fix.cost}) &rarr; '
                f"{fix.plan.message}</div>"
            )
        if plan.assumptions:
            rows.append(f"<small>estimates: {'; '.join(plan.assumptions)}</small>")
        return "".join(rows)

    def build(self, fig) -> None:
        """Left: one stacked bar of a GPU's memory; right: max concurrency against max_model_len."""
        self.memory_ax, self.concurrency_ax = fig.subplots(1, 2, width_ratios=[3, 2])
        left = self.memory_ax
        self.parts = {
            name: left.barh(0, 0, left=0, height=0.6, color=color, edgecolor="k", lw=0.5)[0]
            for name, color in PALETTE.items()
        }
        self.total_line = left.axvline(0, color="k", lw=1.5)
        self.usable_line = left.axvline(0, color="k", ls="--", lw=1, label="x gpu_memory_utilization")
        left.set_yticks([])
        left.set_ylim(-0.5, 1.6)

        right = self.concurrency_ax
        (self.concurrency_line,) = right.plot([1], [1], "o-", ms=3)
        self.one_request = right.axhline(1, color="tab:red", lw=1, ls=":", label="one request")
        self.no_budget = right.text(
            0.5, 0.5, "no KV budget:\nmax_model_len cannot help", ha="center", va="center", transform=right.transAxes
        )
        self.chosen_len = right.axvline(1, color="gray", lw=1)
        log2_x_axis(right, MAX_MODEL_LENS)
        right.set_xlim(MAX_MODEL_LENS[0] / 1.25, MAX_MODEL_LENS[-1] * 1.25)
        log_y_axis(right)
        right.set_xlabel("max_model_len")
        right.set_ylabel("max concurrency (x)")
        right.set_title("smaller max_model_len: more requests, same weights", fontsize=8)

    def update_figure(self) -> None:
        plan = self.plan()
        self._update_memory_bar(plan)
        self._update_concurrency(plan)

    def _update_memory_bar(self, plan: memory.ServingPlan) -> None:
        """Weights, activations, overhead and KV cache side by side in one GPU's memory."""
        total = plan.gpu.memory_bytes if plan.gpu else plan.usable
        sizes = {
            "weights": plan.weights_on_gpu,
            "activations (est.)": plan.activations,
            "overhead (est.)": plan.overhead,
            "KV cache": max(plan.kv_budget, 0),
        }
        sizes["not used"] = max(total - sum(sizes.values()), 0)
        start = 0.0
        for name, size in sizes.items():
            bar = self.parts[name]
            bar.set_x(start)
            bar.set_width(size / memory.GiB)
            bar.set_label(f"{name} {memory.format_bytes(size)}")
            start += size / memory.GiB
        self.total_line.set_xdata([total / memory.GiB] * 2)
        self.usable_line.set_xdata([plan.usable / memory.GiB] * 2)
        left = self.memory_ax
        left.set_xlim(0, max(start, total / memory.GiB) * 1.02)
        left.set_xlabel("GiB per GPU" if plan.gpu else "GiB (KV cache bytes given)")
        left.set_title(plan.message[:70] + ("..." if len(plan.message) > 70 else ""), fontsize=8)
        left.legend(fontsize=7, ncols=3, loc="upper center")  # rebuilt: the sizes are in the labels

    def _update_concurrency(self, plan: memory.ServingPlan) -> None:
        """Requests of max_model_len tokens that fit at once, for each max_model_len (same KV budget)."""
        has_budget = plan.kv_budget > 0
        for artist in (self.concurrency_line, self.one_request):
            artist.set_visible(has_budget)
        self.no_budget.set_visible(not has_budget)
        self.chosen_len.set_xdata([plan.max_model_len] * 2)
        ax = self.concurrency_ax
        if not has_budget:
            if ax.get_legend() is not None:
                ax.get_legend().remove()
            return
        lens = [n for n in MAX_MODEL_LENS if n <= plan.model.max_position_embeddings]
        conc = [
            vllm_rules.vllm_kv_capacity(plan.kv_budget, plan.bytes_per_token, plan.block_size, n).max_concurrency
            for n in lens
        ]
        self.concurrency_line.set_data(lens, conc)
        positive = [c for c in conc if c > 0] or [1.0]
        ax.set_ylim(min(min(positive), 1.0) / 2, max(max(positive), 1.0) * 2)  # keep "one request" in view
        ax.legend(fontsize=7)


def image_rows(plan: memory.ServingPlan) -> list[str]:
    """A vision-language model's images in tokens: per image, per request, in the KV cache, in profiling."""
    vision = plan.model.vision
    per_image = memory.image_tokens(vision)
    kv_tokens = vllm_rules.usable_blocks(plan.capacity.num_blocks) * plan.block_size if plan.ok else 0
    per_request = memory.images_per_request(vision, plan.max_model_len)
    in_kv = memory.images_in_kv_cache(vision, kv_tokens)
    where = "cross-attention tokens" if vision.cross_attention else "tokens"
    return [
        number(f"image {where} per image (largest)", f"{per_image:,}", "tf-image-tokens", per_image),
        number(
            "images per request (max_model_len)",
            "not limited by it (one text position each)" if per_request is None else f"{per_request:,}",
            "tf-images-per-request",
            "" if per_request is None else per_request,
        ),
        number("images in the KV cache at once", f"{in_kv:,}", "tf-images-in-kv", in_kv),
        number(
            "dummy images in vLLM's profiling run",
            f"{plan.images_profiled:,}",
            "tf-profile-images",
            plan.images_profiled,
        ),
    ]


def budget_calculator(**kwargs) -> BudgetCalculator:
    """Model x GPU x dtype x utilisation x max_model_len x TP x offload -> vLLM's KV line or its error."""
    return BudgetCalculator(**kwargs)
