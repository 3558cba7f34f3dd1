"""How `make notebooks` runs the lessons: two kernels side by side (pytest-xdist), except the lessons below, which
run alone afterwards because what they show depends on having the machine to themselves.

Measured on the 2-core box: beside another lesson, lesson 09's 32 concurrent requests reached vLLM one by one
(745 engine steps instead of ~24), so "batching pays" would be false there; lessons 13 and 16 compare tokens per
second of two engines, which a neighbour's training would skew."""

import pytest

ALONE = {
    "09_batching_and_concurrency.ipynb": "requests must reach the server together",
    "13_build_the_engine.ipynb": "compares our engine's throughput with batching on and off",
    "16_speculative_decoding.ipynb": "times a draft-and-verify step against plain decoding",
}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.name in ALONE:
            item.add_marker(pytest.mark.solo)
