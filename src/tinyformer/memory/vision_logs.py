"""The public vLLM start-up logs of vision-language models that the calculator is checked against
(``reference/vlm_models.json`` "cases"): each case's card and settings replayed through
:func:`~tinyformer.memory.planner.plan_serving`, next to what its log says.

Boundary: the cases and their replay only. The vision formulas are :mod:`tinyformer.memory.vision`, which the
planner uses; this module sits above the planner, so the planner never reaches back here.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from importlib import resources

from tinyformer.memory.catalogue import GPU, ModelSpec, gpus, lookup
from tinyformer.memory.formulas import GiB
from tinyformer.memory.planner import ServingPlan, plan_serving
from tinyformer.vllm_rules import kv_cache_blocks

FAILURE_CLASS = {
    "ok": "fits",
    "max_model_len_too_long": "kv_error",
    "no_kv_memory": "kv_error",
    "weights_dont_fit": "oom",
    "profile_oom": "oom",
}


@dataclass(frozen=True)
class CaseResult:
    case_id: str
    predicted_class: str
    logged_class: str
    predicted_kv_tokens: int  # whole blocks x block size, what vLLM <= 0.6 printed as "KV cache (N)"
    logged_kv_tokens: int | None
    plan: ServingPlan

    @property
    def kv_ratio(self) -> float | None:
        return None if not self.logged_kv_tokens else self.predicted_kv_tokens / self.logged_kv_tokens


def logged_cases() -> list[dict]:
    """The public vLLM start-up logs of reference/vlm_models.json (card, settings, what was logged, source)."""
    return json.loads((resources.files("tinyformer") / "reference" / "vlm_models.json").read_text())["cases"]


def case_gpu(case: dict):
    """The case's card: a row of the shipped GPU table, the total memory its own log printed, or the memory
    implied by a text-only model's "# GPU blocks" line from the same machine and settings (``calibrate``)."""
    gpu = case["gpu"]
    if "calibrate" in gpu:
        return GPU(gpu["name"], implied_memory_bytes(case), gpu["compute_capability"])
    if "memory_gib" not in gpu:
        return lookup(gpus(), gpu["name"], "GPU")
    return GPU(gpu["name"], int(gpu["memory_gib"] * GiB), gpu["compute_capability"])


def implied_memory_bytes(case: dict) -> int:
    """Total GPU memory that makes the planner reproduce the calibration model's logged block count.

    vLLM: blocks = (total x utilisation - weights - activations - overhead) // block bytes, so
    total = (weights + activations + overhead + blocks x block bytes) / utilisation, with the planner's
    own weights and activation estimates for the text model.
    """
    calibrate = case["gpu"]["calibrate"]
    spec = ModelSpec(name=calibrate["name"], **calibrate["text"])
    probe = GPU("probe", 2**50, case["gpu"]["compute_capability"])
    settings = dict(case["settings"]) | {"dtype": calibrate["dtype"]}
    plan = plan_serving(spec, probe, engine=case["engine"], **settings)
    kv = calibrate["gpu_blocks"] * plan.block_size * plan.bytes_per_token
    used = plan.weights_on_gpu + plan.activations + plan.overhead + kv
    return math.ceil(used / plan.gpu_memory_utilization)


def plan_case(case: dict) -> CaseResult:
    """The calculator's prediction for one logged start-up, next to what the log says."""
    settings = dict(case["settings"])
    plan = plan_serving(case["model"], case_gpu(case), engine=case["engine"], **settings)
    blocks = kv_cache_blocks(max(plan.kv_budget, 0), plan.bytes_per_token, plan.block_size)
    return CaseResult(
        case_id=case["id"],
        predicted_class=FAILURE_CLASS[plan.status],
        logged_class=case["logged"]["class"],
        predicted_kv_tokens=blocks * plan.block_size,
        logged_kv_tokens=case["logged"].get("kv_tokens"),
        plan=plan,
    )
