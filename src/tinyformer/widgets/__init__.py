"""Interactive ipywidgets front ends over tested pure functions (tinyformer.memory, the model, vLLM's sizing).

Each widget computes its numbers with plain functions (tested without a browser), updates after a short
debounce instead of on every slider tick, is driven by standard sliders and dropdowns (so the keyboard
works), and also carries a static PNG of its current figure, which is what a reader without a widget
front end (nbmake, nbconvert, a static notebook viewer) sees.
"""

from tinyformer.widgets.attention_memory import AttentionExplorer, attention_explorer, explorer_numbers
from tinyformer.widgets.attention_weights import (
    AttentionWeightsViewer,
    attention_row,
    attention_weights,
    attention_weights_viewer,
)
from tinyformer.widgets.budget import BudgetCalculator, budget_calculator
from tinyformer.widgets.engine_stepper import EngineStepper, engine_stepper
from tinyformer.widgets.kv_stepper import KVCacheStepper, KVTrace, kv_cache_stepper, trace_generation

__all__ = [
    "AttentionExplorer",
    "AttentionWeightsViewer",
    "BudgetCalculator",
    "EngineStepper",
    "KVCacheStepper",
    "KVTrace",
    "attention_explorer",
    "attention_row",
    "attention_weights",
    "attention_weights_viewer",
    "budget_calculator",
    "engine_stepper",
    "explorer_numbers",
    "kv_cache_stepper",
    "trace_generation",
]
