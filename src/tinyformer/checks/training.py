"""Lesson 04 exercises: the next-token cross-entropy and one plain SGD step.

Expected answers: ``tinyformer.train.lm_loss`` and the optimizer ``tinyformer.train.make_optimizer``
builds (``torch.optim.SGD``; momentum 0 for the plain step w <- w - lr x grad).
"""

from __future__ import annotations

import copy
import math

import torch

from tinyformer.checks.core import Case, compare_numbers, ratio_is, run_check
from tinyformer.checks.models import random_ids, tiny_model
from tinyformer.train import TrainConfig, lm_loss, make_optimizer

SHAPES = ((2, 5), (1, 8), (4, 3))  # (batch, tokens)


def check_lm_loss(fn, *, quiet: bool = False):
    """``fn(logits, targets)``: logits [B, T, V], targets [B, T] -> the mean next-token cross-entropy (a number)."""

    def make_cases():
        cases = []
        for seed, (batch, length) in enumerate(SHAPES):
            model = tiny_model(seed=seed, vocab_size=17 + 3 * seed)
            ids = random_ids(model, batch, length + 1, seed)
            with torch.no_grad():
                logits = model(ids[:, :-1])  # [B, T, V]
            targets = ids[:, 1:]  # [B, T], already the next tokens
            label = f"B={batch}, T={length}, V={model.config.vocab_size}"
            cases.append(Case(label, (logits, targets), lm_loss(logits, targets).item()))
        return cases

    def summed(got, case):
        logits, _ = case.args
        if ratio_is(got, case.expected, logits.shape[0] * logits.shape[1]):
            return "that is the sum over all B x T predictions; the loss is their mean."
        return None

    def log2(got, case):
        if ratio_is(got, case.expected, 1 / math.log(2)):
            return "that is in bits (log base 2); cross-entropy here uses the natural log (nats)."
        return None

    def per_token(got, case):
        if isinstance(got, torch.Tensor) and got.numel() > 1:
            return "that is one loss per prediction: the training loss is their mean, one number."
        return None

    return run_check(
        "check_lm_loss",
        fn,
        make_cases,
        compare_numbers(rel=1e-5),
        diagnoses=(per_token, summed, log2),
        hint="cross-entropy wants logits [N, V] and targets [N]: flatten the batch and time axes together; "
        "the targets are already the next tokens, don't shift them again.",
        quiet=quiet,
    )


def check_sgd_step(fn, *, quiet: bool = False):
    """``fn(params, lr)``: update every parameter in place, w <- w - lr x w.grad (plain SGD, no momentum)."""

    def make_cases():
        cases = []
        for seed, (lr, (batch, length)) in enumerate(zip((0.1, 0.5, 0.03), SHAPES, strict=True)):
            model = tiny_model(seed=seed)
            ids = random_ids(model, batch, length + 1, seed)
            with torch.enable_grad():  # a notebook may have switched gradients off globally
                lm_loss(model(ids[:, :-1]), ids[:, 1:]).backward()
            before = [p.detach().clone() for p in model.parameters()]
            grads = [p.grad.clone() for p in model.parameters()]
            stepped = copy.deepcopy(model)  # deepcopy leaves the gradients behind: give them back
            for twin, p in zip(stepped.parameters(), model.parameters(), strict=True):
                twin.grad = p.grad.clone()
            make_optimizer(stepped, TrainConfig(lr=lr, momentum=0.0)).step()  # the package's SGD
            expected = [(name, p.detach().clone()) for name, p in stepped.named_parameters()]
            label = f"lr={lr}, {len(expected)} parameter tensors"
            extra = dict(before=before, grads=grads, lr=lr)
            cases.append(Case(label, (list(model.parameters()), lr), expected, extra=extra))
        return cases

    def updated_params(returned, args):
        return [p.detach().clone() for p in args[0]]

    def compare(got, expected):
        for g, (name, e) in zip(got, expected, strict=True):
            if not torch.allclose(g, e, atol=1e-6, rtol=1e-5):
                difference = (g - e).abs().max().item()
                return f"{name} is not what one SGD step gives (largest difference {difference:.3g})."
        return None

    def moved_by(got, case, factor):
        before, grads = case.extra["before"], case.extra["grads"]
        pairs = zip(got, before, grads, strict=True)
        return all(torch.allclose(g, b + factor * d, atol=1e-6, rtol=1e-5) for g, b, d in pairs)

    def unchanged(got, case):
        if moved_by(got, case, 0.0):
            return (
                "the parameters did not change. Update them in place (p -= ..., or p.add_(...)) inside "
                "`with torch.no_grad():`; `p = p - ...` only rebinds a local name."
            )
        return None

    def wrong_sign(got, case):
        if moved_by(got, case, case.extra["lr"]):
            return "wrong sign: you went *up* the gradient. Subtract lr x grad to make the loss smaller."
        return None

    def no_lr(got, case):
        if moved_by(got, case, -1.0):
            return "you subtracted the whole gradient: scale it by the learning rate lr first."
        return None

    return run_check(
        "check_sgd_step",
        fn,
        make_cases,
        compare,
        diagnoses=(unchanged, wrong_sign, no_lr),
        answer=updated_params,
        error_hints={
            "leaf Variable that requires grad": "autograd refuses in-place changes to weights it tracks: do the "
            "update inside `with torch.no_grad():`.",
            "NoneType": "a parameter has no .grad: the checker gives you parameters after loss.backward(), so "
            "use p.grad as it is (don't zero it before the update).",
        },
        hint="for every parameter p: p <- p - lr x p.grad, in place and without recording it for autograd "
        "(torch.no_grad()).",
        quiet=quiet,
    )
