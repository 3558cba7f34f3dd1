"""The shipped corpus: a small synthetic language with an exactly known Bayes floor.

Every sentence is

    the NOUN (PREP the NOUN){0,1,2} VERB [ADVERB] .

The verb agrees in number with the *first* noun (the subject), not with the nouns of the
prepositional phrases in between ("the cat near the dogs sleeps ."). Predicting the verb's form
therefore needs attention to a token several positions back, and knowing which noun is the
subject needs word order.

The grammar is unambiguous: the prefix of a sentence fixes the generator's state, so the best
possible predictor's next-token distribution is the generator's own, and its cross-entropy can be
computed exactly (`Corpus.entropy_rate` in expectation, `Corpus.bayes_loss` on given windows).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

NOUNS = ["cat", "dog", "bird", "fox", "horse", "frog", "mouse", "bear", "wolf", "goat", "duck", "lion"]
PLURAL = {"mouse": "mice", "fox": "foxes", "wolf": "wolves"}
VERBS = ["run", "sleep", "jump", "sing", "eat", "hide", "swim", "wait"]
PREPOSITIONS = ["near", "behind", "with", "under", "beside"]
ADVERBS = ["today", "slowly", "again", "quietly", "often"]

P_PLURAL = 0.5  # subject and every PP noun are plural with this probability
P_PP = (0.3, 0.4, 0.3)  # probability of 0, 1, 2 prepositional phrases
P_ADVERB = 0.4


def plural(noun: str) -> str:
    return PLURAL.get(noun, noun + "s")


def third_person(verb: str) -> str:
    return verb + ("es" if verb.endswith(("sh", "ch", "s", "x")) else "s")


def vocabulary() -> list[str]:
    """Every word the grammar can produce, in a fixed order."""
    words = ["the", "."]
    words += NOUNS + [plural(n) for n in NOUNS]
    words += VERBS + [third_person(v) for v in VERBS]
    words += PREPOSITIONS + ADVERBS
    return words


def _entropy(probs) -> float:
    return -sum(p * math.log(p) for p in probs if p > 0)


@dataclass(frozen=True)
class Corpus:
    """Seeded generator of the synthetic language; token ids come from a tokenizer's vocabulary."""

    seed: int = 0

    def sentences(self, n: int, seed_offset: int = 0) -> list[list[str]]:
        rng = np.random.default_rng(self.seed + seed_offset)
        return [self._sentence(rng) for _ in range(n)]

    @staticmethod
    def _sentence(rng: np.random.Generator) -> list[str]:
        subject_plural = rng.random() < P_PLURAL
        subject = NOUNS[rng.integers(len(NOUNS))]
        words = ["the", plural(subject) if subject_plural else subject]
        for _ in range(rng.choice(3, p=P_PP)):
            noun = NOUNS[rng.integers(len(NOUNS))]
            noun = plural(noun) if rng.random() < P_PLURAL else noun
            words += [PREPOSITIONS[rng.integers(len(PREPOSITIONS))], "the", noun]
        verb = VERBS[rng.integers(len(VERBS))]
        words.append(verb if subject_plural else third_person(verb))  # agreement with the subject
        if rng.random() < P_ADVERB:
            words.append(ADVERBS[rng.integers(len(ADVERBS))])
        words.append(".")
        return words

    def text(self, n_sentences: int, seed_offset: int = 0) -> str:
        return " ".join(w for s in self.sentences(n_sentences, seed_offset) for w in s)

    # ---- the exact Bayes floor -------------------------------------------------------------

    @staticmethod
    def step_distributions(words: list[str]) -> list[dict[str, float]]:
        """For each word of a stream of whole sentences, the generator's distribution over it
        given every word before it (which, the grammar being unambiguous, is the best possible
        prediction). The first word of each sentence ("the") is certain."""
        noun_forms = lambda p_pl: {  # noqa: E731 - a tiny table builder
            **{n: (1 - p_pl) / len(NOUNS) for n in NOUNS},
            **{plural(n): p_pl / len(NOUNS) for n in NOUNS},
        }
        dists, i = [], 0
        while i < len(words):
            start = i
            dists.append({"the": 1.0})  # "the"
            dists.append(noun_forms(P_PLURAL))  # subject
            subject_plural = words[start + 1] not in NOUNS
            i, n_pp = start + 2, 0
            while True:  # after a noun: another PP, or the verb
                p_more = sum(P_PP[n_pp + 1 :]) / sum(P_PP[n_pp:])
                verbs = VERBS if subject_plural else [third_person(v) for v in VERBS]
                step = {v: (1 - p_more) / len(verbs) for v in verbs}
                step.update({p: p_more / len(PREPOSITIONS) for p in PREPOSITIONS})
                dists.append(step)
                if words[i] in PREPOSITIONS:
                    dists.append({"the": 1.0})
                    dists.append(noun_forms(P_PLURAL))
                    i, n_pp = i + 3, n_pp + 1
                    continue
                i += 1  # the verb
                break
            step = {a: P_ADVERB / len(ADVERBS) for a in ADVERBS}
            step["."] = 1 - P_ADVERB
            dists.append(step)
            if words[i] in ADVERBS:
                dists.append({".": 1.0})
                i += 1
            i += 1  # the full stop
        return dists[: len(words)]

    @staticmethod
    def entropy_rate() -> float:
        """Expected nats per token of the best possible predictor, exact from the grammar's
        probabilities: E[sum of step entropies per sentence] / E[tokens per sentence]."""
        return Corpus._entropy_rate(h_verb=math.log(len(VERBS)))

    @staticmethod
    def _entropy_rate(h_verb: float) -> float:
        """The entropy rate when the verb, once the sentence reaches it, carries ``h_verb`` nats (the base
        grammar: log 8, a uniform choice of eight verbs)."""
        h_noun = _entropy([P_PLURAL, 1 - P_PLURAL]) + math.log(len(NOUNS))
        h_pp = h_noun + math.log(len(PREPOSITIONS))  # "PREP the NOUN": prep choice + noun choice
        expected_bits, expected_len = h_noun, 2.0  # "the" (certain) + subject
        for n_pp in range(3):  # decision points after the subject and after each PP
            reach = sum(P_PP[n_pp:])  # probability this decision happens
            p_more = sum(P_PP[n_pp + 1 :]) / reach
            h = _entropy([p_more, 1 - p_more]) + (1 - p_more) * h_verb
            expected_bits += reach * (h + p_more * h_pp)
            expected_len += reach * p_more * 3
        expected_len += 1  # verb
        expected_bits += _entropy([P_ADVERB, 1 - P_ADVERB]) + P_ADVERB * math.log(len(ADVERBS))
        expected_len += P_ADVERB + 1  # optional adverb, full stop
        return expected_bits / expected_len


@dataclass(frozen=True)
class Dialect(Corpus):
    """The base grammar with its verbs said differently: every word of a base sentence goes through ``verb_map``
    (verb forms to verb forms; other words unchanged). Lesson 15 fine-tunes one LoRA adapter per dialect.

    The map touches verbs only, and what follows a verb does not depend on which verb it was, so a dialect
    sentence's prefix fixes the generator's state exactly as the base's does: the best prediction is the base's
    distribution pushed through the map, and the floor is the base's formula with the verb's entropy recomputed.
    A map that only relabels (one form to one form) keeps the floor; one that merges verbs lowers it."""

    name: str = "dialect"
    verb_map: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        forms = set(VERBS) | {third_person(v) for v in VERBS}
        bad = [pair for pair in self.verb_map if not set(pair) <= forms]
        if bad:
            raise ValueError(f"verb_map must map verb forms to verb forms ({sorted(forms)}); got {bad}.")
        if len(dict(self.verb_map)) != len(self.verb_map):
            raise ValueError("verb_map maps a form twice: give each form once.")

    def sentences(self, n: int, seed_offset: int = 0) -> list[list[str]]:
        said = dict(self.verb_map)
        return [[said.get(w, w) for w in s] for s in super().sentences(n, seed_offset)]

    def step_distributions(self, words: list[str]) -> list[dict[str, float]]:
        # Corpus.step_distributions reads nouns, prepositions and adverbs only, never which verb: it walks a
        # dialect's words as they are; then each distribution is pushed through the map.
        return [self._said(dist) for dist in Corpus.step_distributions(words)]

    def entropy_rate(self) -> float:
        """Exact nats per token of the best predictor of this dialect."""
        plural_verbs = self._said({v: 1 / len(VERBS) for v in VERBS})
        singular_verbs = self._said({third_person(v): 1 / len(VERBS) for v in VERBS})
        h_verb = P_PLURAL * _entropy(plural_verbs.values()) + (1 - P_PLURAL) * _entropy(singular_verbs.values())
        return Corpus._entropy_rate(h_verb)

    def _said(self, dist: dict[str, float]) -> dict[str, float]:
        said = dict(self.verb_map)
        out: dict[str, float] = {}
        for word, p in dist.items():
            out[said.get(word, word)] = out.get(said.get(word, word), 0.0) + p
        return out


def swapped_agreement(seed: int = 0) -> Dialect:
    """Plural subjects take the -s form and single ones the bare verb ("the cats sleeps", "the cat sleep"): every
    verb form relabelled, so the floor is the base's."""
    pairs = [(v, third_person(v)) for v in VERBS] + [(third_person(v), v) for v in VERBS]
    return Dialect(seed=seed, name="swapped agreement", verb_map=tuple(pairs))


def four_verbs(seed: int = 0) -> Dialect:
    """Only four verbs: jump says run, sing says sleep, swim says eat, wait says hide (in both forms). Two verbs
    become one, so the verb carries log 4 nats instead of log 8 and the floor is lower."""
    merge = {"jump": "run", "sing": "sleep", "swim": "eat", "wait": "hide"}
    pairs = [(a, b) for a, b in merge.items()] + [(third_person(a), third_person(b)) for a, b in merge.items()]
    return Dialect(seed=seed, name="four verbs", verb_map=tuple(pairs))


class TokenStream:
    """A corpus encoded to ids, split into train and validation, served as random windows.

    Windows start at sentence starts, so every target has its whole sentence before it in the
    window and the Bayes floor of the windows is exactly computable."""

    def __init__(self, corpus: Corpus, tokenizer, n_sentences: int = 20_000, val_fraction: float = 0.1):
        if not isinstance(val_fraction, int | float) or not 0 < val_fraction < 1:
            raise ValueError(
                f"val_fraction must be a number between 0 and 1 (exclusive), got {val_fraction!r}: training and "
                "validation each need some sentences (the lessons use 0.1)."
            )
        if not isinstance(n_sentences, int) or isinstance(n_sentences, bool) or n_sentences < 2:
            raise ValueError(f"n_sentences must be a whole number of at least 2, got {n_sentences!r}.")
        words = [w for s in corpus.sentences(n_sentences) for w in s]
        self.tokenizer = tokenizer
        self.words = words
        ids = tokenizer.convert_tokens_to_ids(words)
        self.ids = torch.tensor(ids, dtype=torch.long)  # [N]
        self.log_probs = self._true_log_probs(words, corpus)  # [N], log p_best(word_i | prefix)
        starts = [i for i, w in enumerate(words) if w == "the" and (i == 0 or words[i - 1] == ".")]
        split = starts[min(max(int(len(starts) * (1 - val_fraction)), 1), len(starts) - 1)]  # >= 1 sentence each
        self.train_starts = torch.tensor([s for s in starts if s < split])
        self.val_starts = torch.tensor([s for s in starts if s >= split])
        self.split = split

    @staticmethod
    def _true_log_probs(words, corpus: Corpus) -> torch.Tensor:
        dists = corpus.step_distributions(words)  # the corpus's own grammar (a Dialect rewrites the verbs)
        return torch.tensor([math.log(d[w]) for d, w in zip(dists, words, strict=True)], dtype=torch.float64)

    def batch(self, split: str, batch_size: int, context_len: int, generator: torch.Generator):
        """(x, y) of shape [B, T]: y is x shifted by one token."""
        starts = self._starts(split, context_len)
        pick = starts[torch.randint(len(starts), (batch_size,), generator=generator)]
        offsets = torch.arange(context_len + 1)
        windows = self.ids[pick[:, None] + offsets]  # [B, T + 1]
        return windows[:, :-1], windows[:, 1:]

    def _starts(self, split: str, context_len: int) -> torch.Tensor:
        if split not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val', got {split!r}.")
        starts = self.train_starts if split == "train" else self.val_starts
        end = self.split if split == "train" else len(self.ids)
        fitting = starts[starts + context_len + 1 <= end]
        if len(fitting) == 0:
            raise ValueError(
                f"no {split} window of context_len + 1 = {context_len + 1} tokens fits in the {split} part of the "
                f"corpus ({end if split == 'train' else end - self.split} tokens). Use more sentences (n_sentences) "
                f"or a smaller context_len."
            )
        return fitting

    def val_windows(self, context_len: int, max_windows: int = 256) -> torch.Tensor:
        """A fixed set of validation windows [N, T + 1] (the same every call)."""
        starts = self._starts("val", context_len)[:max_windows]
        return starts[:, None] + torch.arange(context_len + 1)  # positions into self.ids

    def bayes_loss(self, positions: torch.Tensor) -> float:
        """Exact loss of the best possible predictor on the targets of these windows [N, T + 1]."""
        return float(-self.log_probs[positions[:, 1:]].mean())
