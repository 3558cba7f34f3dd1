"""The GPU calculator against 21 public vLLM start-up logs, term by term.

    python benchmarks/startup_logs.py

For every record of src/tinyformer/reference/vllm_startup_logs.json, tinyformer.memory.predict_startup prices
the start-up from the record's settings and model config alone; the table puts each term next to what the log
printed (per GPU; "-" where the log does not say). Targets (issue 23): median |KV tokens error| <= 5 %, >= 90 %
of cases within 10 %, the outcome right in every case, weights within 2 % where logged. Cases whose log lacks
what a prediction needs are listed with the reason and left out of the KV statistics (never silently).
Exits 1 when a target is missed. The seeds' A10G logs (reference/vllm_seed_logs.json) follow, outside the
targets.
"""

from __future__ import annotations

import statistics
import sys

from tinyformer.memory import startup

COLUMNS = (("kv_cache_tokens", "KV tokens", "{:,.0f}"), ("kv_cache_gib", "KV GiB", "{:.2f}"),
           ("model_weights_gib", "weights", "{:.2f}"), ("activation_peak_gib", "activ.", "{:.2f}"),
           ("non_torch_gib", "non-torch", "{:.2f}"), ("cuda_graph_gib", "graphs", "{:.2f}"))  # fmt: skip
TARGETS = {"kv_median_abs_error": 0.05, "kv_within_10pct": 0.90}


def cell(score: startup.CaseScore, term: str, fmt: str) -> str:
    predicted, logged, error = score.predicted(term), score.logged.get(term), score.error(term)
    text = "-" if predicted is None else fmt.format(predicted)
    if logged is not None:
        text += f" / {fmt.format(logged)}" + (f" ({error:+.1%})" if error is not None else "")
    return text


def print_table(scores: list[startup.CaseScore]) -> None:
    print("predicted / logged (error) per GPU; a worker's profiling line (w) is compared with a worker's peak\n")
    for s in scores:
        p = s.prediction
        mark = "" if s.outcome_right else "  <-- outcome wrong"
        print(f"{s.case_id} {p.engine} v{'.'.join(map(str, p.version))}: {p.outcome} / {s.logged_outcome}{mark}")
        print(
            "   "
            + "  ".join(f"{label} {cell(s, term, fmt)}" for term, label, fmt in COLUMNS)
            + (" (w)" if s.worker_line else "")
        )


def per_term(scores: list[startup.CaseScore]) -> None:
    print("\nper term over the cases that log it: n, median |error|, worst error (case)")
    for term, label, _ in COLUMNS:
        pairs = [(s.error(term), s.case_id) for s in scores if s.error(term) is not None]
        if pairs:
            worst = max(pairs, key=lambda pair: abs(pair[0]))
            median = statistics.median(abs(e) for e, _ in pairs)
            print(f"  {label:10} n={len(pairs):2}  median {median:6.1%}  worst {worst[0]:+7.1%} ({worst[1]})")


def main() -> int:
    scores = [startup.score(case) for case in startup.cases()]
    print_table(scores)
    per_term(scores)
    summary = startup.summary(scores)
    print("\nnot held to the KV targets, with the reason:")
    for s in scores:
        if s.unscored:
            print(f"  {s.case_id}: {s.unscored}")
        elif "kv_cache_tokens" not in s.logged:
            print(f"  {s.case_id}: the log prints no KV token or block count (KV GiB compared where logged)")
    print(
        f"\nKV tokens over {summary['kv_cases']} cases: median |error| {summary['kv_median_abs_error']:.1%} "
        f"(target <= 5%), within 10%: {summary['kv_within_10pct']:.0%} (target >= 90%)\n"
        f"outcome right: {summary['outcomes_right']}/{summary['cases']}; "
        f"weights within 2%: {summary['weights_within_2pct']}/{summary['weights_logged']}"
    )
    missed = [
        summary["kv_median_abs_error"] > TARGETS["kv_median_abs_error"],
        summary["kv_within_10pct"] < TARGETS["kv_within_10pct"],
        summary["outcomes_right"] < summary["cases"],
        summary["weights_within_2pct"] < summary["weights_logged"],
    ]
    print("targets: " + ("MISSED" if any(missed) else "met"))
    print_seeds()
    return 1 if any(missed) else 0


def print_seeds() -> None:
    """The seeds' A10G logs (reference/vllm_seed_logs.json), priced by the model as fitted above: shown, not
    part of the targets (they are a different population: vLLM 0.6.1, free-memory profiling)."""
    print("\nthe seeds' logs (never fitted to; not in the targets):")
    print_table([startup.score(case) for case in startup.seed_cases()])


if __name__ == "__main__":
    sys.exit(main())
