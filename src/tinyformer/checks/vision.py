"""Lesson 10 exercises: how many tokens an image becomes, the placeholder expansion, and their KV bytes.

Expected answers: :mod:`tinyformer.vision.tokens` (``image_tokens``, ``expand_placeholders``, ``image_kv_bytes``).
"""

from __future__ import annotations

from tinyformer.checks.core import Case, compare_numbers, ratio_is, run_check
from tinyformer.vision import tokens as vision

# (image_size, patch_size, drop_cls): the lesson's 32/8, CLIP ViT-L/14 at 224 and 336 px (LLaVA-1.5), SigLIP 384/14.
PATCH_CASES = ((32, 8, True), (32, 8, False), (224, 14, True), (336, 14, True), (336, 14, False), (384, 16, False))


def check_image_token_count(fn, *, quiet: bool = False):
    """``fn(image_size, patch_size, drop_cls)`` -> tokens one image puts into the LM's sequence (CLIP: +1 CLS)."""

    def make_cases():
        return [
            Case(
                f"image {size} px, patches {patch} px, drop_cls={drop}",
                (size, patch, drop),
                vision.image_tokens(size, patch, drop_cls=drop),
            )
            for size, patch, drop in PATCH_CASES
        ]

    def per_side(got, case):
        size, patch, _ = case.args
        return "that is one row of patches: the grid is (size / patch) on EACH side." if got == size // patch else None

    def cls_wrong(got, case):
        size, patch, drop = case.args
        grid = (size // patch) ** 2
        if drop and got == grid + 1:
            return "drop_cls=True: the CLS vector is removed before the LM sees the patches."
        if not drop and got == grid:
            return "drop_cls=False: the CLS vector goes to the LM too, one more token."
        return None

    return run_check(
        "check_image_token_count",
        fn,
        make_cases,
        compare_numbers(),
        diagnoses=(per_side, cls_wrong),
        hint="(image_size // patch_size) ** 2 patches, plus 1 for CLS unless it is dropped.",
        quiet=quiet,
    )


# (ids, image_token_id, tokens_per_image): one image first, two images around text, none, an image at the end.
EXPANSION_CASES = (
    ([65, 3], 65, 16),
    ([3, 65, 7, 65, 4], 65, 4),
    ([3, 5, 9], 65, 16),
    ([9, 9, 2], 2, 3),
)


def check_expand_placeholders(fn, *, quiet: bool = False):
    """``fn(ids, image_token_id, tokens_per_image)`` -> the ids with each image id repeated tokens_per_image times."""

    def make_cases():
        return [
            Case(f"ids={ids}, image id {image}, {n} tokens per image", (list(ids), image, n), expand(ids, image, n))
            for ids, image, n in EXPANSION_CASES
        ]

    def expand(ids, image, n):
        return vision.expand_placeholders(ids, image, n)

    def compare(got, expected):
        if not isinstance(got, (list, tuple)):
            return f"expected a list of ids like {expected}, got {type(got).__name__}."
        got = [int(i) for i in got]
        if got == expected:
            return None
        return f"expected {len(expected)} ids {expected}, got {len(got)} ids {got}."

    def appended(got, case):
        ids, image, n = case.args
        if isinstance(got, list) and sorted(got) == sorted(expand(ids, image, n)):
            return "right ids, wrong order: each placeholder's copies go where the placeholder was."
        return None

    def one_extra(got, case):
        ids, image, n = case.args
        if isinstance(got, list) and len(got) == len(ids) + n * ids.count(image):
            return "the placeholder itself is one of the copies: it becomes n ids in total, not n more."
        return None

    return run_check(
        "check_expand_placeholders",
        fn,
        make_cases,
        compare,
        diagnoses=(appended, one_extra),
        hint="walk through the ids; copy each one, except the image id, which becomes tokens_per_image copies.",
        quiet=quiet,
    )


# (n_images, tokens_per_image, n_layer, n_kv_heads, head_dim, bytes per value): this lesson's model in fp32,
# LLaVA-1.5-7B (576 tokens per image, 32 layers x 32 heads x 128, bf16), a grouped-query model with 8 KV heads.
KV_CASES = ((1, 16, 2, 2, 32, 4), (3, 16, 2, 2, 32, 4), (1, 576, 32, 32, 128, 2), (3, 576, 32, 8, 128, 2))


def check_image_kv_bytes(fn, *, quiet: bool = False):
    """``fn(n_images, tokens_per_image, n_layer, n_kv_heads, head_dim, bytes_per_value)`` -> KV bytes of the images."""

    def make_cases():
        return [
            Case(
                f"{n} image(s) x {t} tokens, n_layer={layers}, kv heads={heads}, head_dim={hd}, {nbytes} B per value",
                (n, t, layers, heads, hd, nbytes),
                vision.image_kv_bytes(n, t, layers, heads, hd, nbytes),
            )
            for n, t, layers, heads, hd, nbytes in KV_CASES
        ]

    def missing_kv_pair(got, case):
        return "half the answer: every token keeps a key AND a value." if ratio_is(got, case.expected, 0.5) else None

    def one_image(got, case):
        n = case.args[0]
        if n > 1 and ratio_is(got, case.expected, 1 / n):
            return "one image's worth: count every image of the request."
        return None

    return run_check(
        "check_image_kv_bytes",
        fn,
        make_cases,
        compare_numbers(),
        diagnoses=(missing_kv_pair, one_image),
        hint="image tokens are tokens: (images x tokens per image) x 2 x layers x kv heads x head_dim x bytes.",
        quiet=quiet,
    )
