"""The machinery every exercise checker shares: run the learner's function on seeded cases, compare
with the package's answer, and print one friendly verdict.

A checker never lets the learner's code crash the kernel (exceptions become a message naming the
line), never prints solution code, and leaves the notebook's random state untouched, so the cells
after it print the same numbers whether the exercise passed or not.
"""

from __future__ import annotations

import copy
import math
import traceback
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

_THIS_PACKAGE = str(Path(__file__).resolve().parent)

PASS_MARK, FAIL_MARK = "✅", "❌"


@dataclass
class Case:
    """One call of the learner's function: its arguments, the package's answer, a readable label."""

    label: str  # e.g. "T=5" or "B=2, heads=4, T=7, head_dim=8"
    args: tuple
    expected: object
    kwargs: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)  # what a diagnosis may need (e.g. the inputs' shapes)


# compare(got, expected) -> None when they agree, else a short description of the difference.
Compare = Callable[[object, object], str | None]
# diagnose(got, case) -> a hint for a recognised mistake, or None.
Diagnose = Callable[[object, Case], str | None]


@dataclass
class CheckResult:
    """What a checker found. Truthy when every case passed, so a notebook can ``assert check_x(fn)``."""

    name: str
    passed: bool
    cases_run: int
    cases_total: int
    message: str

    def __bool__(self) -> bool:
        return self.passed

    def __str__(self) -> str:
        return self.message

    def __repr__(self) -> str:  # a bare ``check_x(fn)`` as a cell's last line shows nothing extra
        return f"CheckResult({self.name!r}, passed={self.passed})"


def run_check(
    name: str,
    fn,
    make_cases: Callable[[], Sequence[Case]],
    compare: Compare,
    *,
    diagnoses: Iterable[Diagnose] = (),
    hint: str = "",
    answer: Callable[[object, tuple], object] | None = None,
    error_hints: dict[str, str] | None = None,
    quiet: bool = False,
) -> CheckResult:
    """Call ``fn`` on every case, stop at the first disagreement, print and return the verdict.

    answer(returned, args): what to compare for exercises that change their arguments in place (e.g. an
    SGD step updates the parameters it is given); by default the function's return value.
    error_hints: {text in an exception's message: the hint to give when the learner's code raises it}.
    """
    if not callable(fn):
        what = "None" if fn is None else f"a {type(fn).__name__}"
        result = _fail(
            name,
            0,
            0,
            f"expected your function itself, got {what}. Pass the function without calling it: "
            f"{name}(my_function), not {name}(my_function(...)).",
        )
        return _report(result, quiet)
    with torch.random.fork_rng(devices=[]):  # neither the cases nor the learner's code move the notebook's RNG
        cases = list(make_cases())
        result = _run_cases(name, fn, cases, compare, list(diagnoses), hint, answer, error_hints or {})
    return _report(result, quiet)


def _run_cases(name, fn, cases, compare, diagnoses, hint, answer, error_hints) -> CheckResult:
    total = len(cases)
    for index, case in enumerate(cases, start=1):
        where = f"case {index} of {total} ({case.label})"
        args = fresh_copy(case.args)  # the learner may change them in place; the expected answer must not move
        try:
            got = fn(*args, **fresh_copy(case.kwargs))
        except NotImplementedError:
            return _fail(name, index, total, "not written yet: replace `raise NotImplementedError` with your code.")
        except (Exception, SystemExit) as error:  # the learner's bug must not take the kernel down
            specific = next((text for marker, text in error_hints.items() if marker in str(error)), None)
            return _fail(
                name, index, total, f"{where}: your function raised {_describe_error(error)}", specific or hint
            )
        try:
            if answer is not None:
                got = answer(got, args)
            problem = "your function returned None; did you forget `return`?" if got is None else None
            problem = problem or compare(got, case.expected)
        except Exception as error:  # an answer of a type we didn't foresee: say what it was
            problem = f"could not compare your answer ({type(got).__name__}) with the expected one: {error}"
        if problem:
            specific = _first_diagnosis(diagnoses, got, case)
            return _fail(name, index, total, f"{where}: {problem}", specific or hint)
    return CheckResult(name, True, total, total, f"{PASS_MARK} {name}: passed all {total} cases.")


def fresh_copy(value):
    """A deep copy in which tensors keep their gradients (``copy.deepcopy`` drops a parameter's ``.grad``)."""
    if isinstance(value, torch.Tensor):
        twin = copy.deepcopy(value)
        if value.grad is not None:
            twin.grad = value.grad.clone()
        return twin
    if isinstance(value, (list, tuple)):
        return type(value)(fresh_copy(v) for v in value)
    if isinstance(value, dict):
        return {k: fresh_copy(v) for k, v in value.items()}
    return copy.deepcopy(value)


def _first_diagnosis(diagnoses: list[Diagnose], got, case: Case) -> str | None:
    for diagnose in diagnoses:
        try:
            found = diagnose(got, case)
        except Exception:  # a diagnosis is a guess; a guess that doesn't apply says nothing
            found = None
        if found:
            return found
    return None


def _fail(name: str, index: int, total: int, what: str, hint: str = "") -> CheckResult:
    lines = [f"{FAIL_MARK} {name}: {what}"]
    if hint:
        lines.append(f"   hint: {hint}")
    return CheckResult(name, False, index, total, "\n".join(lines))


def _report(result: CheckResult, quiet: bool) -> CheckResult:
    if not quiet:
        print(result.message)
    return result


def _describe_error(error: BaseException) -> str:
    """``TypeError: ...`` plus the line of the learner's code it came from (never a line of ours)."""
    text = f"{type(error).__name__}: {error}"
    frames = [f for f in traceback.extract_tb(error.__traceback__) if not f.filename.startswith(_THIS_PACKAGE)]
    if frames:
        frame = frames[0]  # the learner's function (later frames are inside torch)
        if frame.line:
            text += f"\n   in {frame.name}, line {frame.lineno}: {frame.line.strip()}"
    return text


# --------------------------------------------------------------------------------------------------
# Comparing answers
# --------------------------------------------------------------------------------------------------


def as_tensor(got) -> torch.Tensor:
    """The learner's answer as a tensor (a list or numpy array is accepted too)."""
    if isinstance(got, torch.Tensor):
        return got.detach()
    return torch.as_tensor(got)


def describe(t: torch.Tensor, at: tuple[int, ...] | None = None) -> str:
    """``float32 tensor of shape [2, 4, 5, 5]`` plus its values when they are few enough to read, else the
    row (last axis) around index ``at``."""
    text = f"{str(t.dtype).removeprefix('torch.')} tensor of shape {list(t.shape)}"
    if t.numel() <= (36 if t.dtype == torch.bool else 12):
        return f"{text}: {_values(t)}"
    if at is not None and t.dim() > 1:
        row = t[at[:-1]]
        shown = _values(row[:12]) if row.numel() > 12 else _values(row)
        more = f" ... ({row.numel()} values)" if row.numel() > 12 else ""
        return f"{text}; row {list(at[:-1])}: {shown}{more}"
    return text


def _values(t: torch.Tensor):
    return t.int().tolist() if t.dtype == torch.bool else _rounded(t.tolist())


def _rounded(values):
    if isinstance(values, list):
        return [_rounded(v) for v in values]
    return round(values, 4) if isinstance(values, float) else values


def tensors_match(got, expected: torch.Tensor, atol: float = 1e-5, rtol: float = 1e-4) -> bool:
    try:
        got = as_tensor(got)
    except Exception:
        return False
    if got.shape != expected.shape:
        return False
    if expected.dtype == torch.bool:
        return torch.equal(got.bool(), expected) if got.dtype == torch.bool or _is_zero_one(got) else False
    if _fractional(got, expected) is not None:
        return False
    return torch.allclose(got.to(expected.dtype), expected, atol=atol, rtol=rtol, equal_nan=False)


def _fractional(got: torch.Tensor, expected: torch.Tensor) -> tuple[int, ...] | None:
    """Where ``got`` has a fraction although whole numbers are expected (converting would truncate 9.7 to 9)."""
    if expected.is_floating_point() or not got.is_floating_point():
        return None
    fraction = ~torch.isfinite(got) | (got != got.round())
    return _first_index(fraction) if fraction.any() else None


def compare_tensors(atol: float = 1e-5, rtol: float = 1e-4) -> Compare:
    """A comparison of tensors: type, shape, dtype kind, then values within ``atol + rtol * |expected|``."""

    def compare(got, expected: torch.Tensor) -> str | None:
        if isinstance(got, tuple) and len(got) > 0 and isinstance(got[0], torch.Tensor):
            return f"expected one tensor, got a tuple of {len(got)}; return only {describe_shape(expected)}."
        try:
            got = as_tensor(got)
        except Exception:
            return f"expected a tensor of shape {list(expected.shape)}, got a {type(got).__name__}."
        if got.shape != expected.shape:
            return f"wrong shape: expected {list(expected.shape)}, got {list(got.shape)}."
        if expected.dtype == torch.bool:
            return _compare_bool(got, expected)
        if expected.is_floating_point() and not got.is_floating_point():
            return f"expected floating-point numbers, got {describe(got)}."
        if (where := _fractional(got, expected)) is not None:
            return f"expected whole numbers, got {got[where].item():g} at index {where}: {describe(got, where)}."
        got = got.to(expected.dtype)
        if torch.isnan(got).any() and not torch.isnan(expected).any():
            where = _first_index(torch.isnan(got))
            return f"your answer has NaN (first at index {where}); expected {describe(expected)}."
        close = torch.isclose(got, expected, atol=atol, rtol=rtol)
        if close.all():
            return None
        where = _first_index(~close)
        rows = f"\n   expected: {describe(expected, where)}\n   got:      {describe(got, where)}"
        if not expected.is_floating_point():
            first = f"expected {expected[where].item()}, got {got[where].item()}"
            return f"wrong values. First at index {where}: {first}.{rows}"
        diff = (got - expected).abs().max().item()
        return (
            f"values differ (largest difference {diff:.3g}, allowed {atol:g} + {rtol:g} x |expected|). "
            f"First at index {where}: expected {expected[where].item():.5g}, got {got[where].item():.5g}.{rows}"
        )

    return compare


def _compare_bool(got: torch.Tensor, expected: torch.Tensor) -> str | None:
    if got.dtype != torch.bool and not _is_zero_one(got):
        return f"expected True/False values, got {describe(got)}."
    got = got.bool()
    if torch.equal(got, expected):
        return None
    where = _first_index(got != expected)
    return (
        f"wrong at index {where}: expected {bool(expected[where])}, got {bool(got[where])}.\n"
        f"   expected: {describe(expected)}\n   got:      {describe(got)}"
    )


def _is_zero_one(t: torch.Tensor) -> bool:
    return bool(((t == 0) | (t == 1)).all())


def _first_index(mask: torch.Tensor) -> tuple[int, ...]:
    return tuple(int(i) for i in mask.nonzero()[0])


def describe_shape(t: torch.Tensor) -> str:
    return f"a tensor of shape {list(t.shape)}"


def compare_numbers(rel: float = 1e-9) -> Compare:
    """Whole numbers must match exactly; other numbers within ``rel`` (relative)."""

    def compare(got, expected) -> str | None:
        if isinstance(got, torch.Tensor):
            if got.numel() != 1:
                return f"expected one number, got {describe(got)}."
            got = got.item()
        if isinstance(got, bool) or not isinstance(got, (int, float)):
            return f"expected a number like {expected!r}, got {got!r} ({type(got).__name__})."
        if isinstance(expected, int) and not (math.isfinite(got) and float(got).is_integer()):
            return f"expected a whole number ({_number(expected)}), got {got!r}; a count has no fraction."
        if math.isclose(got, expected, rel_tol=rel, abs_tol=rel):
            return None
        return f"expected {_number(expected)}, got {_number(got)}."

    return compare


def _number(x) -> str:
    return f"{x:,}" if isinstance(x, int) or float(x).is_integer() else f"{x:,.4g}"


def ratio_is(got, expected, factor: float) -> bool:
    """True when a numeric answer is ``factor`` times the right one (a missing or extra factor)."""
    try:
        got = float(got.item() if isinstance(got, torch.Tensor) else got)
    except (TypeError, ValueError, RuntimeError):
        return False
    return expected != 0 and math.isclose(got, expected * factor, rel_tol=1e-6)


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def off_by(factor, text: str):
    """A diagnosis: the answer is ``factor(case)`` times the right one (a factor missing or extra)."""

    def diagnose(got, case):
        wrong = factor(case)
        return text if wrong != 1 and ratio_is(got, case.expected, wrong) else None

    return diagnose
