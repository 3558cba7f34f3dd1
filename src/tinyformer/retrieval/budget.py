"""How many retrieved parents fit a context window: the recipe's logistic k per retriever, and the Hamilton
(largest remainder) apportionment that shares a budget among retrievers when their requests overflow it.

    k = logistic_k(max_model_len)                 # documents each retriever asks for
    room = context_room(max_model_len, prompt_tokens=20, answer_tokens=16)   # tokens left for parents
    shares = hamilton([k, k, k], room // parent_tokens)                      # integer shares, summing to the budget
"""

from __future__ import annotations

import math
from numbers import Integral, Real


def logistic_k(x: float, L: float = 120, a: float = 2e-5, m: float = 60000) -> int:
    """Documents a retriever asks for when the model holds ``x`` tokens: L / (1 + e^(-a (x - m))), rounded.

    Rounding is half up (``floor(k + 0.5)``): 27.5 -> 28, as a person rounds (Python's ``round`` would give 28
    too here, but 26.5 -> 26). The curve starts near 28 for tiny windows, is L/2 = 60 at x = m and approaches L.
    """
    for name, value in (("x", x), ("L", L), ("a", a), ("m", m)):
        if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value):
            raise ValueError(f"{name} must be a finite number, got {value!r}.")
    if x < 0:
        raise ValueError(f"x is a sequence length in tokens and cannot be negative, got {x}.")
    if L <= 0:
        raise ValueError(f"L is the most documents a retriever may ask for and must be positive, got {L}.")
    k = L / (1 + math.exp(-a * (x - m)))
    return math.floor(k + 0.5)


def hamilton(requests: list[int], total: int) -> list[int]:
    """Integer shares of ``total`` proportional to ``requests`` (Hamilton's largest-remainder method).

    Each request's quota is ``request * total / sum(requests)``. Everyone gets the whole part of their quota;
    the seats left over go one each to the largest fractional parts. Ties (equal remainders) go to the
    earlier request in the list, so the answer never depends on a sort's whims. When the requests fit
    (``sum(requests) <= total``) every request is granted in full: shares sum to ``min(total, sum(requests))``.
    Arithmetic is in integers (remainders compared as ``request * total mod sum``), so no float rounding
    can reorder two remainders.

    >>> hamilton([50, 40, 60], 100)
    [33, 27, 40]
    """
    requests = _check_requests(requests)
    total = _check_whole("total", total)
    requested = sum(requests)
    if requested <= total:
        return list(requests)
    shares = [r * total // requested for r in requests]  # whole parts of the quotas
    remainders = [r * total % requested for r in requests]  # fractional parts, times `requested`
    left = total - sum(shares)
    # Largest remainder first; equal remainders: the earlier request first.
    for i in sorted(range(len(requests)), key=lambda i: (-remainders[i], i))[:left]:
        shares[i] += 1
    return shares


def context_room(max_model_len: int, *, prompt_tokens: int, answer_tokens: int) -> int:
    """Tokens left for retrieved text: ``max_model_len - prompt_tokens - answer_tokens`` (prompt + answer + parents
    must fit the served model's max_model_len)."""
    for name, value in (("max_model_len", max_model_len), ("prompt_tokens", prompt_tokens)):
        _check_whole(name, value)
    _check_whole("answer_tokens", answer_tokens)
    room = max_model_len - prompt_tokens - answer_tokens
    if room < 0:
        raise ValueError(
            f"the prompt ({prompt_tokens} tokens) and the answer ({answer_tokens} tokens) alone exceed "
            f"max_model_len={max_model_len}: shorten the prompt, ask for fewer answer tokens, or serve a longer "
            "max_model_len."
        )
    return room


def parents_per_retriever(requests: list[int], room: int, parent_tokens: int) -> list[int]:
    """How many parents each retriever may contribute: ``room // parent_tokens`` parents in all (a parent is at
    most ``parent_tokens`` long, so that many always fit), shared by ``hamilton``."""
    if _check_whole("parent_tokens", parent_tokens) == 0:
        raise ValueError("parent_tokens must be at least 1.")
    return hamilton(requests, _check_whole("room", room) // parent_tokens)


def alabama_paradox(requests: list[int], total: int) -> list[int]:
    """Indices of the requests whose share *drops* when the total grows from ``total`` to ``total + 1``."""
    before, after = hamilton(requests, total), hamilton(requests, total + 1)
    return [i for i, (b, a) in enumerate(zip(before, after, strict=True)) if a < b]


def _check_whole(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise ValueError(f"{name} must be a whole number (an int), got {value!r} ({type(value).__name__}).")
    if value < 0:
        raise ValueError(f"{name} cannot be negative, got {value}.")
    return int(value)


def _check_requests(requests) -> list[int]:
    if isinstance(requests, (str, bytes)) or not hasattr(requests, "__iter__"):
        raise ValueError(f"requests must be a list of whole numbers, got {requests!r}.")
    requests = list(requests)
    for i, r in enumerate(requests):
        if isinstance(r, bool) or not isinstance(r, Integral):
            raise ValueError(f"requests[{i}] must be a whole number of documents, got {r!r} ({type(r).__name__}).")
        if r < 0:
            raise ValueError(f"requests[{i}] is {r}: a retriever cannot ask for a negative number of documents.")
    return [int(r) for r in requests]
