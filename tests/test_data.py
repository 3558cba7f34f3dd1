"""The synthetic corpus: determinism, grammar, the exact Bayes floor, and batching."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from tinyformer import data
from tinyformer.data import ADVERBS, NOUNS, P_ADVERB, P_PLURAL, P_PP, PREPOSITIONS, VERBS, Corpus, TokenStream
from tinyformer.train import lm_loss

# Written out here rather than taken from data.plural / data.third_person, so the parser below is
# an independent reading of the grammar in data.py's docstring.
IRREGULAR = {"mouse": "mice", "fox": "foxes", "wolf": "wolves"}
PLURAL_NOUNS = {IRREGULAR.get(n, n + "s") for n in NOUNS}
SINGULAR_VERBS = {v + "s" for v in VERBS}  # none of the verbs ends in s/x/ch/sh
LONG_STREAM = 20_000  # sentences; ~130k tokens


def parse(words: list[str]) -> dict:
    """Check one sentence against the grammar; return its shape. Raises AssertionError if it does not parse."""
    assert words[0] == "the" and words[-1] == ".", words
    assert words[1] in NOUNS or words[1] in PLURAL_NOUNS, words
    shape = {"subject_plural": words[1] in PLURAL_NOUNS, "pp_plurals": [], "adverb": False}
    i = 2
    while words[i] in PREPOSITIONS:
        assert words[i + 1] == "the" and (words[i + 2] in NOUNS or words[i + 2] in PLURAL_NOUNS), words
        shape["pp_plurals"].append(words[i + 2] in PLURAL_NOUNS)
        i += 3
    assert len(shape["pp_plurals"]) <= 2, words
    agreeing = VERBS if shape["subject_plural"] else SINGULAR_VERBS
    assert words[i] in agreeing, f"verb {words[i]!r} does not agree with the subject {words[1]!r}: {words}"
    if words[i + 1] in ADVERBS:
        shape["adverb"] = True
        i += 1
    assert i + 2 == len(words), words
    return shape


def sentence_log_prob(shape: dict) -> float:
    """log p of any one sentence of this shape, as the generator draws it: every word choice is
    uniform within its slot, so the probability depends only on the shape."""
    number = lambda is_plural: P_PLURAL if is_plural else 1 - P_PLURAL  # noqa: E731
    k = len(shape["pp_plurals"])
    p = P_PP[k] * number(shape["subject_plural"]) / len(NOUNS) / len(VERBS)
    for is_plural in shape["pp_plurals"]:
        p *= number(is_plural) / len(NOUNS) / len(PREPOSITIONS)
    p *= P_ADVERB / len(ADVERBS) if shape["adverb"] else 1 - P_ADVERB
    return math.log(p)


def sentence_count(shape: dict) -> int:
    k = len(shape["pp_plurals"])
    return len(NOUNS) * (len(PREPOSITIONS) * len(NOUNS)) ** k * len(VERBS) * (len(ADVERBS) if shape["adverb"] else 1)


def all_shapes():
    for k, adverb, subject_plural in itertools.product(range(3), [False, True], [False, True]):
        for pp_plurals in itertools.product([False, True], repeat=k):
            yield {"subject_plural": subject_plural, "pp_plurals": list(pp_plurals), "adverb": adverb}


@pytest.fixture(scope="module")
def long_stream() -> list[list[str]]:
    return Corpus(seed=1).sentences(LONG_STREAM)


@pytest.fixture(scope="module")
def stream(tokenizer) -> TokenStream:
    return TokenStream(Corpus(seed=0), tokenizer, n_sentences=2000)


# ---- the generator ------------------------------------------------------------------------------------


def test_corpus_is_deterministic_under_seed():
    assert Corpus(seed=3).sentences(200) == Corpus(seed=3).sentences(200)
    assert Corpus(seed=3).sentences(200) != Corpus(seed=4).sentences(200)
    assert Corpus(seed=3).sentences(200, seed_offset=1) != Corpus(seed=3).sentences(200)
    assert Corpus(seed=3).text(5) == " ".join(w for s in Corpus(seed=3).sentences(5) for w in s)


def test_every_sentence_parses_and_verbs_agree_with_the_subject(long_stream):
    shapes = [parse(s) for s in long_stream[:5000]]
    # The hard case must actually occur: a noun right before the verb whose number differs from the subject's.
    misleading = [s for s in shapes if s["pp_plurals"] and s["pp_plurals"][-1] != s["subject_plural"]]
    assert len(misleading) > 500
    assert {len(s["pp_plurals"]) for s in shapes} == {0, 1, 2}
    assert {s["adverb"] for s in shapes} == {False, True}


def test_vocabulary_covers_the_corpus_once(long_stream):
    vocab = data.vocabulary()
    assert len(vocab) == len(set(vocab))
    assert {w for s in long_stream for w in s} == set(vocab)


# ---- the exact Bayes floor ----------------------------------------------------------------------------


def test_shape_enumeration_is_a_distribution():
    """Guards the brute force below: shapes x sentences per shape x p(sentence) sums to one."""
    total = sum(sentence_count(s) * math.exp(sentence_log_prob(s)) for s in all_shapes())
    assert total == pytest.approx(1.0, abs=1e-12)


def test_entropy_rate_equals_brute_force_enumeration():
    """Entropy rate = E[-log p(sentence)] / E[tokens per sentence], summed over every sentence shape."""
    nats = length = 0.0
    for shape in all_shapes():
        p_shape = sentence_count(shape) * math.exp(sentence_log_prob(shape))
        nats += p_shape * -sentence_log_prob(shape)
        length += p_shape * (4 + 3 * len(shape["pp_plurals"]) + shape["adverb"])  # the N .. V . plus extras
    assert Corpus.entropy_rate() == pytest.approx(nats / length, abs=1e-12)
    assert 1.0 < Corpus.entropy_rate() < math.log(len(data.vocabulary()))


def test_step_distributions_sum_to_one_and_cover_each_word(long_stream):
    words = [w for s in long_stream[:2000] for w in s]
    dists = Corpus.step_distributions(words)
    assert len(dists) == len(words)
    for dist, word in zip(dists, words, strict=True):
        assert sum(dist.values()) == pytest.approx(1.0, abs=1e-12)
        assert dist.get(word, 0.0) > 0.0, f"{word!r} has probability 0 under its step distribution"


def test_step_log_probs_multiply_to_the_sentence_probability(long_stream):
    """Chain rule: the per-token probabilities of a sentence multiply to the generator's probability of it."""
    for sentence in long_stream[:2000]:
        dists = Corpus.step_distributions(sentence)
        total = sum(math.log(d[w]) for d, w in zip(dists, sentence, strict=True))
        assert total == pytest.approx(sentence_log_prob(parse(sentence)), abs=1e-9)


def test_entropy_rate_matches_a_long_stream(long_stream):
    """Sentences are i.i.d., so the per-token mean is a ratio estimator; its standard error (delta
    method) is sqrt(Var(L - H n) / N) / E[n] with L = nats and n = tokens of a sentence."""
    words = [w for s in long_stream for w in s]
    neg_log_p = torch.tensor([-math.log(d[w]) for d, w in zip(Corpus.step_distributions(words), words, strict=True)])
    lengths = torch.tensor([len(s) for s in long_stream])
    per_sentence = torch.stack([chunk.sum() for chunk in neg_log_p.split(lengths.tolist())]).double()
    rate = float(per_sentence.sum() / lengths.sum())
    residual = per_sentence - rate * lengths
    std_error = float(residual.std() / math.sqrt(len(long_stream)) / lengths.double().mean())
    assert std_error < 1e-3, "sample too small for the check to mean anything"
    assert abs(rate - Corpus.entropy_rate()) < 4 * std_error, (rate, Corpus.entropy_rate(), std_error)


# ---- the token stream and its batches -----------------------------------------------------------------


def window_positions(stream: TokenStream, x: torch.Tensor, y: torch.Tensor) -> list[set[int]]:
    """For each row, every start position in the stream where the window x + y[-1] occurs."""
    T = x.shape[1]
    all_windows = stream.ids.unfold(0, T + 1, 1)  # [N - T, T + 1]
    rows = torch.cat([x, y[:, -1:]], dim=1)  # [B, T + 1]
    return [set((all_windows == row).all(dim=1).nonzero().flatten().tolist()) for row in rows]


@pytest.mark.parametrize("split", ["train", "val"])
def test_batches_are_shifted_windows_at_sentence_starts(stream, split):
    x, y = stream.batch(split, batch_size=16, context_len=20, generator=torch.Generator().manual_seed(0))
    assert x.shape == y.shape == (16, 20) and x.dtype == torch.long
    assert torch.equal(y[:, :-1], x[:, 1:])
    starts = set((stream.train_starts if split == "train" else stream.val_starts).tolist())
    for found in window_positions(stream, x, y):
        at_starts = found & starts
        assert at_starts, "a window that does not begin at a sentence start of its split"
        if split == "train":
            assert min(at_starts) + 21 <= stream.split, "a train window reaches into validation"


def test_batches_are_deterministic_under_generator_seed(stream):
    a = stream.batch("train", 8, 16, torch.Generator().manual_seed(5))
    b = stream.batch("train", 8, 16, torch.Generator().manual_seed(5))
    c = stream.batch("train", 8, 16, torch.Generator().manual_seed(6))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])


def test_train_and_val_are_disjoint(stream):
    starts = [i for i, w in enumerate(stream.words) if w == "the" and (i == 0 or stream.words[i - 1] == ".")]
    train, val = stream.train_starts.tolist(), stream.val_starts.tolist()
    assert train + val == starts
    assert max(train) < stream.split == min(val)
    assert len(val) == pytest.approx(0.1 * len(starts), abs=1)
    windows = stream.val_windows(context_len=20)
    assert windows.min() >= stream.split


def test_val_windows_are_fixed_and_start_at_val_sentences(stream):
    windows = stream.val_windows(context_len=12, max_windows=50)
    assert windows.shape == (50, 13)
    assert torch.equal(windows, stream.val_windows(context_len=12, max_windows=50))
    assert set(windows[:, 0].tolist()) <= set(stream.val_starts.tolist())
    assert torch.equal(windows - windows[:, :1], torch.arange(13).expand(50, 13))


def test_unknown_split(stream):
    with pytest.raises(ValueError, match=r"split must be 'train' or 'val', got 'test'"):
        stream.batch("test", 2, 8, torch.Generator())


def bayes_logits(stream: TokenStream, windows: torch.Tensor) -> torch.Tensor:
    """The best predictor's log-probabilities as logits [N, T, V] for the targets of windows [N, T + 1]."""
    dists = Corpus.step_distributions(stream.words)
    vocab = stream.tokenizer.get_vocab()
    logits = torch.full((*windows[:, 1:].shape, len(vocab)), -1e9, dtype=torch.float64)
    for n, t in itertools.product(*map(range, windows[:, 1:].shape)):
        for word, p in dists[windows[n, t + 1]].items():
            if p > 0:  # e.g. a third preposition: listed with probability 0
                logits[n, t, vocab[word]] = math.log(p)
    return logits


def test_bayes_loss_is_the_loss_of_the_generators_own_predictions(stream):
    windows = stream.val_windows(context_len=24, max_windows=64)
    floor = stream.bayes_loss(windows)
    targets = stream.ids[windows[:, 1:]]  # [N, T]
    assert float(lm_loss(bayes_logits(stream, windows), targets)) == pytest.approx(floor, abs=1e-9)
    uniform = math.log(len(stream.tokenizer))
    assert 0.5 * Corpus.entropy_rate() < floor < uniform
    # Long windows average over many sentences, so the floor approaches the entropy rate.
    assert stream.bayes_loss(stream.val_windows(context_len=120)) == pytest.approx(Corpus.entropy_rate(), abs=0.1)
