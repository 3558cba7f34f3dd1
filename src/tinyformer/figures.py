"""Pictures the lessons draw from what they just measured: each function takes the live objects (a server's
reported pool, the engine's recorded steps, vLLM's iteration log, a table of losses or recalls) and returns a
matplotlib ``Figure``; the numbers it draws come from small pure functions beside it, which the tests check.

    startup_figure          lesson 07: where a vLLM start's seconds went, milestone by milestone
    arrivals_figure         lesson 07: tokens received over time, streamed vs one plain reply
    kv_pool_figure          lesson 08: vLLM's block pool, the null block, each request's blocks, free blocks
    engine_vs_vllm_figure   lesson 13: our engine and vLLM on the same per-step axis
    bits_figure             lesson 11: validation loss and agreement with fp32 vs bits per weight
    recall_figure           lesson 12: recall@k for every retriever
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from matplotlib.colors import to_rgba
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from tinyformer import vllm_rules
from tinyformer.serving import vllm_log

NULL_COLOUR, FREE_COLOUR = "black", "white"


class ShownFigure(Figure):
    """A figure that shows itself as a PNG where it is a cell's last value (or passed to ``display``), whatever
    matplotlib backend the kernel has loaded, if any. Made without pyplot, so it is shown once, not again by
    pyplot's inline backend at the end of the cell, and never kept alive by pyplot's list of open figures."""

    def _repr_png_(self) -> bytes:
        buffer = io.BytesIO()
        self.savefig(buffer, format="png", dpi=80)
        return buffer.getvalue()


PREFILL_COLOUR, DECODE_COLOUR, BLOCKS_COLOUR = "tab:orange", "tab:blue", "black"


# ----- lesson 07: a start, and a streamed reply ---------------------------------------------------------------


def startup_segments(stage_seconds: Mapping[str, float], ready_seconds: float) -> list[tuple[str, float, float]]:
    """(what the server did, from, to) in seconds after ``start()`` began, one stretch per milestone reached
    (``VLLMServer.stage_seconds``, ``ready_seconds``); a milestone the polls never saw merges into the next."""
    segments, begin, unseen = [], 0.0, []
    milestones = [(milestone, before) for _, milestone, before in vllm_log.STAGES] + [vllm_log.READY]
    for milestone, before in milestones:
        end = ready_seconds if milestone == vllm_log.READY[0] else stage_seconds.get(milestone)
        if end is None:
            unseen.append(before)
        else:
            segments.append(("; ".join(unseen + [before]), begin, end))
            begin, unseen = end, []
    return segments


def startup_figure(stage_seconds: Mapping[str, float], ready_seconds: float) -> Figure:
    """One bar from start() to /health answering, cut at the log's milestones; the legend below it."""
    fig = ShownFigure(figsize=(12, 3.2))
    ax = fig.subplots()
    for i, (what, begin, end) in enumerate(startup_segments(stage_seconds, ready_seconds)):
        ax.barh(
            0, end - begin, left=begin, color=request_colour(i), edgecolor="white", label=f"{end - begin:.1f} s: {what}"
        )
    ax.set(xlabel="seconds after start()", yticks=[], xlim=(0, ready_seconds * 1.01))
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(0, -0.3), ncol=2, frameon=False)
    fig.subplots_adjust(left=0.02, right=0.98, bottom=0.5, top=0.97)
    return fig


def arrivals_figure(streamed: Sequence[tuple[float, int]], plain_seconds: float) -> Figure:
    """Tokens the client holds over time: a streamed reply ((seconds after sending, tokens so far) per piece)
    against a plain request of the same reply, which holds nothing until it all arrives at ``plain_seconds``."""
    fig = ShownFigure(figsize=(7, 3.2))
    ax = fig.subplots()
    times, counts = [0.0] + [1e3 * t for t, _ in streamed], [0] + [n for _, n in streamed]
    ax.step(times, counts, where="post", color=DECODE_COLOUR, label="streamed: each piece as it comes")
    ax.plot(times[1], counts[1], "o", color=PREFILL_COLOUR, label=f"first token after {times[1]:.0f} ms")
    ax.step([0, 1e3 * plain_seconds], [0, counts[-1]], where="post", color="k", ls="--",
            label=f"plain: all {counts[-1]} tokens after {1e3 * plain_seconds:.0f} ms")  # fmt: skip
    ax.set(xlabel="ms after sending", ylabel="tokens the client holds")
    ax.legend(fontsize=8, loc="lower right")
    fig.subplots_adjust(left=0.1, right=0.98, bottom=0.16, top=0.96)
    return fig


# ----- lesson 08: the KV pool -------------------------------------------------------------------------------


def request_blocks(num_blocks: int, block_size: int, request_tokens: int) -> list[list[int]]:
    """The block ids of every request of ``request_tokens`` tokens that the pool holds at once, in order.

    Block 0 is the null block; each request takes whole blocks; what is left over is free. This is what vLLM's
    pool does with requests of ``max_model_len`` tokens (its "maximum concurrency" counts the null block too)."""
    if min(num_blocks, block_size, request_tokens) < 1:
        raise ValueError(
            f"need num_blocks, block_size and request_tokens >= 1, got {num_blocks}, {block_size}, {request_tokens}."
        )
    per_request = vllm_rules.blocks_for_tokens(request_tokens, block_size)
    first = vllm_rules.NULL_BLOCKS
    count = vllm_rules.usable_blocks(num_blocks) // per_request
    return [list(range(first + i * per_request, first + (i + 1) * per_request)) for i in range(count)]


@dataclass(frozen=True)
class Pool:
    """A block pool as vLLM reports it (``ReportedKV``) or as we predict it (``KVBudget``): both have these three."""

    num_blocks: int
    block_size: int
    max_model_len: int

    @classmethod
    def of(cls, reported_or_budget) -> Pool:
        r = reported_or_budget
        return cls(r.num_blocks, r.block_size, r.max_model_len)

    @property
    def requests(self) -> list[list[int]]:
        return request_blocks(self.num_blocks, self.block_size, self.max_model_len)


def kv_pool_figure(pools: Mapping[str, Pool], bytes_per_token: int) -> Figure:
    """One row per pool, drawn to scale in bytes: the null block black, each full-length request's blocks in its
    own colour (the unused tail of its last block hatched), free blocks white."""
    fig = ShownFigure(figsize=(12, 0.75 * len(pools) + 1.1))
    ax = fig.subplots()
    for row, pool in enumerate(pools.values()):
        block_kib = pool.block_size * bytes_per_token / 1024
        y = len(pools) - 1 - row
        owner = {b: i for i, blocks in enumerate(pool.requests) for b in blocks}
        used_in_last = pool.max_model_len - (len(pool.requests[0]) - 1) * pool.block_size if pool.requests else 0
        for b in range(pool.num_blocks):
            x = b * block_kib
            if b < vllm_rules.NULL_BLOCKS:
                colour = NULL_COLOUR
            elif b in owner:
                colour = request_colour(owner[b])
            else:
                colour = FREE_COLOUR
            ax.add_patch(Rectangle((x, y - 0.35), block_kib, 0.7, facecolor=colour, edgecolor="0.3", lw=0.6))
            if b in owner and b == pool.requests[owner[b]][-1] and used_in_last < pool.block_size:
                unused = (pool.block_size - used_in_last) * bytes_per_token / 1024
                ax.add_patch(
                    Rectangle((x + block_kib - unused, y - 0.35), unused, 0.7, facecolor="white", alpha=0.75,
                              hatch="///", edgecolor="0.5", lw=0)
                )  # fmt: skip
        ax.text(
            pool.num_blocks * block_kib + 8,
            y,
            f"{len(pool.requests)} at once",
            va="center",
            fontsize=9,
        )
    ax.set_yticks(range(len(pools)), list(reversed(list(pools))), fontsize=8)
    widest = max(p.num_blocks * p.block_size * bytes_per_token / 1024 for p in pools.values())
    ax.set_xlim(0, widest * 1.12)
    ax.set_ylim(-0.6, len(pools) - 0.4)
    ax.set_xlabel("KV cache budget (KiB); black: the null block, white: free, hatched: reserved but unused tokens")
    ax.set_title("vLLM's block pool filled with requests of max_model_len tokens", fontsize=10)
    fig.subplots_adjust(left=0.3, right=0.98, bottom=0.8 / fig.get_figheight(), top=1 - 0.35 / fig.get_figheight())
    return fig


# ----- lesson 13: our engine vs vLLM, step by step -------------------------------------------------------------


@dataclass(frozen=True)
class StepCounts:
    """One engine step in the terms vLLM's iteration log uses."""

    requests: int  # requests with tokens in this step
    prefill_requests: int  # of which running a prompt chunk ("context requests")
    blocks_used: float  # blocks held once the step is scheduled (vLLM: KV cache usage x usable blocks)


def our_steps(snapshots) -> list[StepCounts]:
    """From ``Engine(record_steps=True).snapshots``."""
    return [StepCounts(len(s.scheduled), sum(x.prefill for x in s.scheduled), s.blocks_used) for s in snapshots]


def vllm_steps(iterations, num_blocks: int) -> list[StepCounts]:
    """From ``VLLMServer.iterations()`` (``log_iterations=True``); vLLM's usage is a fraction of the usable blocks."""
    usable = vllm_rules.usable_blocks(num_blocks)
    return [StepCounts(it.requests, it.context_requests, it.kv_cache_usage * usable) for it in iterations]


def engine_vs_vllm_figure(ours: Sequence[StepCounts], vllm: Sequence[StepCounts], num_blocks: int) -> Figure:
    """Two panels on the same axes, step by step: requests in the step (orange: those prefilling) and blocks used."""
    fig = ShownFigure(figsize=(13, 3.4))
    axes = fig.subplots(1, 2, sharex=True, sharey=True)
    for ax, steps, title in ((axes[0], ours, "our engine"), (axes[1], vllm, "vLLM (its iteration log)")):
        x = range(len(steps))
        ax.fill_between(x, [s.requests for s in steps], step="mid", color=DECODE_COLOUR, alpha=0.35,
                        label="requests in the step")  # fmt: skip
        ax.fill_between(x, [s.prefill_requests for s in steps], step="mid", color=PREFILL_COLOUR, alpha=0.8,
                        label="of which prefilling")  # fmt: skip
        ax.plot(x, [s.blocks_used for s in steps], color=BLOCKS_COLOUR, lw=1.2, label="blocks used")
        ax.axhline(vllm_rules.usable_blocks(num_blocks), color="k", ls="--", lw=0.8, label="usable blocks")
        ax.set(title=f"{title}: {len(steps)} steps", xlabel="engine step")
        ax.legend(fontsize=7, loc="upper right")
    fig.subplots_adjust(left=0.05, right=0.99, bottom=0.15, top=0.9, wspace=0.06)
    return fig


# ----- lesson 11: bits per weight ------------------------------------------------------------------------------


def bits_figure(bytes_per_param: Mapping[str, float], loss: Mapping[str, float], agreement: Mapping[str, float],
                floor: float) -> Figure:  # fmt: skip
    """Validation loss (against the Bayes floor) and agreement with the fp32 model's next-token choices, both
    against bits per weight (scales and zero points included), one point per weight format."""
    fig = ShownFigure(figsize=(11, 3.3))
    loss_ax, agree_ax = fig.subplots(1, 2, sharex=True)
    names = list(loss)
    bits = [8 * bytes_per_param[n] for n in names]
    for ax, values, label in ((loss_ax, loss, "validation loss (nats/token)"),
                              (agree_ax, agreement, "next-token choices equal to fp32's")):  # fmt: skip
        ax.plot(bits, [values[n] for n in names], "o", color=DECODE_COLOUR)
        for i, (n, b) in enumerate(zip(names, bits, strict=True)):
            above = i % 2 == 0  # in turn above and below: int4 g64 and g32 sit less than a bit apart
            ax.annotate(n, (b, values[n]), textcoords="offset points", xytext=(4, 4 if above else -11), fontsize=8)
        ax.set_xscale("log", base=2)
        ax.set(xlabel="bits per weight (scales and zero points included)", ylabel=label)
    loss_ax.axhline(floor, color="grey", ls="--", label="Bayes floor")
    loss_ax.legend(fontsize=8)
    agree_ax.set_ylim(min(agreement.values()) - 0.02, 1.005)
    fig.subplots_adjust(left=0.08, right=0.98, bottom=0.17, top=0.95, wspace=0.25)
    return fig


def argmax_agreement(logits, reference_logits) -> float:
    """The fraction of positions where two models' most likely next token is the same ([..., V] logits each)."""
    return float((logits.argmax(-1) == reference_logits.argmax(-1)).float().mean())


# ----- lesson 12: recall@k -------------------------------------------------------------------------------------


def recall_figure(table: Mapping[str, Sequence[float]], ks: Sequence[int]) -> Figure:
    """One curve per retriever: recall@k against k (the values of the lesson's table, ``table[name][i]`` at ks[i])."""
    fig = ShownFigure(figsize=(7.5, 3.4))
    ax = fig.subplots()
    for name, row in table.items():
        if len(row) != len(ks):
            raise ValueError(f"{name!r} has {len(row)} recalls for {len(ks)} values of k; give one per k.")
        dashed = "--" if "random" in name else "-"
        ax.plot(ks, row, dashed, marker="o", ms=4, label=name)
    ax.set(xlabel="k (parents returned)", ylabel="recall@k", xticks=list(ks), ylim=(0, 1.02))
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.subplots_adjust(left=0.09, right=0.66, bottom=0.15, top=0.95)
    return fig


def request_colour(i: int) -> tuple[float, float, float, float]:
    """The colour of request ``i`` in every picture: tab10's strong colours, then tab20's light ones, greys left
    out (grey means a free block), reused after 18 requests."""
    import matplotlib

    strong = [c for k, c in enumerate(matplotlib.colormaps["tab10"].colors) if k != 7]
    light = [c for k, c in enumerate(matplotlib.colormaps["tab20"].colors) if k % 2 and k != 15]
    palette = strong + light
    return to_rgba(palette[i % len(palette)])
