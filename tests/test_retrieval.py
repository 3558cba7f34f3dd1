"""tinyformer.retrieval without a server: pooling, the collection and its chunks, search, the budget."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from tinyformer import retrieval as R
from tinyformer.config import ModelConfig
from tinyformer.model import Transformer
from tinyformer.tokenizer import build_tokenizer

# ----- the budget ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("requests", "total", "expected"),
    [
        ([50, 40, 60], 100, [33, 27, 40]),  # the recipe's case: quotas 33.3, 26.7, 40 -> the .67 gets the seat
        ([6, 6, 2], 10, [4, 4, 2]),  # quotas 4.29, 4.29, 1.43: the 1.43 has the largest remainder
        ([6, 6, 2], 11, [5, 5, 1]),  # quotas 4.71, 4.71, 1.57: two seats to the .71s
        ([1, 1, 1], 2, [1, 1, 0]),  # equal remainders: earlier requests first
        ([28, 28, 28], 4, [2, 1, 1]),
        ([3, 4], 10, [3, 4]),  # fits: granted in full, sum = min(total, sum)
        ([0, 5], 3, [0, 3]),
        ([], 5, []),
        ([7, 9], 0, [0, 0]),
    ],
)
def test_hamilton_hand_worked_cases(requests, total, expected):
    assert R.hamilton(requests, total) == expected


def test_hamilton_properties_on_many_cases():
    gen = torch.Generator().manual_seed(0)
    for _ in range(300):
        requests = torch.randint(0, 60, (int(torch.randint(1, 6, (1,), generator=gen)),), generator=gen).tolist()
        total = int(torch.randint(0, 200, (1,), generator=gen))
        shares = R.hamilton(requests, total)
        assert sum(shares) == min(total, sum(requests))
        assert all(0 <= s <= r for s, r in zip(shares, requests, strict=True))
        if sum(requests) > total:  # each share is its quota rounded down or up
            for s, r in zip(shares, requests, strict=True):
                quota = r * total / sum(requests)
                assert math.floor(quota) <= s <= math.floor(quota) + 1


def test_alabama_paradox_on_a_concrete_case():
    assert R.hamilton([6, 6, 2], 10)[2] == 2 and R.hamilton([6, 6, 2], 11)[2] == 1
    assert R.alabama_paradox([6, 6, 2], 10) == [2]
    assert R.alabama_paradox([50, 40, 60], 100) == []


@pytest.mark.parametrize(
    ("requests", "total", "message"),
    [
        ([5, -1], 3, "negative"),
        ([5, 2.5], 3, "whole number"),
        ([5, 2], 3.0, "whole number"),
        ([5, 2], -1, "cannot be negative"),
        ("53", 3, "list of whole numbers"),
        ([True, 2], 3, "whole number"),
    ],
)
def test_hamilton_refuses_bad_input(requests, total, message):
    with pytest.raises(ValueError, match=message):
        R.hamilton(requests, total)


def test_logistic_k_matches_the_formula_rounded_half_up():
    for x in (0, 128, 2048, 8192, 32768, 60000, 131072, 10**6):
        exact = 120 / (1 + math.exp(-2e-5 * (x - 60000)))
        assert R.logistic_k(x) == math.floor(exact + 0.5)
    assert R.logistic_k(60000) == 60 and R.logistic_k(128) == 28 and R.logistic_k(131072) == 97
    # half up, not Python's round-half-to-even: find x where k is exactly 26.5 and 27.5 in other units
    assert R.logistic_k(0, L=53, a=1.0, m=0) == 27  # 26.5 -> 27 (round() would give 26)


def test_logistic_k_refuses_bad_input():
    with pytest.raises(ValueError, match="negative"):
        R.logistic_k(-1)
    with pytest.raises(ValueError, match="finite number"):
        R.logistic_k(float("nan"))


def test_context_room_and_parents_per_retriever():
    assert R.context_room(128, prompt_tokens=12, answer_tokens=16) == 100
    assert R.parents_per_retriever([28, 28, 28], 100, 32) == [1, 1, 1]
    assert R.parents_per_retriever([50, 40, 60], 3200, 32) == [33, 27, 40]
    with pytest.raises(ValueError, match="alone exceed max_model_len=128"):
        R.context_room(128, prompt_tokens=100, answer_tokens=40)
    with pytest.raises(ValueError, match="at least 1"):
        R.parents_per_retriever([1], 10, 0)


# ----- pooling ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model_and_tokenizer():
    torch.manual_seed(0)
    tokenizer = build_tokenizer()
    model = Transformer(ModelConfig.preset("nano", vocab_size=len(tokenizer))).eval()
    return model, tokenizer


def test_pooling_with_padding_equals_each_text_alone(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    texts = ["the cat sleeps .", "the dogs near the fox behind the mice run quietly ."]
    batched = {p: R.embed(model, tokenizer, texts, pooling=p) for p in ("mean", "last")}
    for i, text in enumerate(texts):
        ids, mask = R.encode(tokenizer, [text])
        hidden = R.hidden_states(model, ids, mask)[0]  # [T, d], no padding at all
        torch.testing.assert_close(batched["mean"][i], F.normalize(hidden.mean(0), dim=-1), atol=1e-6, rtol=0)
        torch.testing.assert_close(batched["last"][i], F.normalize(hidden[-1], dim=-1), atol=1e-6, rtol=0)


def test_mean_pool_ignores_padding_values():
    hidden = torch.randn(2, 4, 3, generator=torch.Generator().manual_seed(1))
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    noisy = hidden.clone()
    noisy[0, 2:] = 1e6
    torch.testing.assert_close(R.mean_pool(noisy, mask), R.mean_pool(hidden, mask))
    torch.testing.assert_close(R.mean_pool(hidden, mask)[0], hidden[0, :2].mean(0))
    torch.testing.assert_close(R.last_token_pool(hidden, mask)[0], hidden[0, 1])


def test_pool_and_encode_refuse_bad_input(model_and_tokenizer):
    _, tokenizer = model_and_tokenizer
    with pytest.raises(ValueError, match="pooling must be one of"):
        R.pool(torch.zeros(1, 1, 2), torch.ones(1, 1), "max")
    with pytest.raises(ValueError, match="list of texts"):
        R.encode(tokenizer, "the cat")


# ----- the collection and its chunks ---------------------------------------------------------------------


def test_collection_has_known_answers_and_is_deterministic():
    docs, questions = R.make_collection(n_topics=5, docs_per_topic=2, seed=3)
    assert (docs, questions) == R.make_collection(n_topics=5, docs_per_topic=2, seed=3)
    assert len(docs) == 10 and len(questions) == 10
    for q in questions:
        assert len(q.relevant) == 2
        noun, verb = q.topic
        for d in docs:
            assert (d.id in q.relevant) == (d.topic == q.topic)
        assert q.text.split()[1] in (noun, R.collection.data.plural(noun))
    with pytest.raises(ValueError, match="n_topics"):
        R.make_collection(n_topics=0)


def test_parent_and_child_chunks_respect_their_token_limits(model_and_tokenizer):
    _, tokenizer = model_and_tokenizer
    docs, _ = R.make_collection(n_topics=4, docs_per_topic=2)
    parents, children = R.parent_child_chunks(docs, tokenizer, parent_tokens=32, child_tokens=12)
    count = lambda text: len(tokenizer.encode(text, add_special_tokens=False))  # noqa: E731
    assert all(p.n_tokens == count(p.text) <= 32 for p in parents)
    assert all(c.n_tokens == count(c.text) <= 12 for c in children)
    for i, parent in enumerate(parents):  # the children of a parent are exactly its text, in order
        assert " ".join(c.text for c in children if c.parent == i) == parent.text
    assert " ".join(p.text for p in parents if p.document == docs[0].id) == docs[0].text
    with pytest.raises(ValueError, match="raise max_tokens"):
        R.pack_sentences(["the cat near the dog behind the fox sleeps ."], tokenizer, 4)


# ----- search ---------------------------------------------------------------------------------------------


def test_top_k_rank_parents_and_recall():
    scores = torch.tensor([[0.1, 0.9, 0.5, 0.9], [0.3, 0.2, 0.8, 0.0]])
    assert R.top_k(scores, 3).tolist() == [[1, 3, 2], [2, 0, 1]]  # ties keep index order
    ranked = R.rank_parents(scores, child_parent=[0, 0, 1, 1], n_parents=2)
    assert ranked.tolist() == [[0, 1], [1, 0]]
    assert R.recall_at_k([[0, 1], [1, 0]], [{1}, {1}], 1) == 0.5
    assert R.recall_at_k([[0, 1], [1, 0]], [{1}, {1}], 2) == 1.0
    with pytest.raises(ValueError, match="k must be between"):
        R.top_k(scores, 5)


def test_cosine_scores_and_centring():
    gen = torch.Generator().manual_seed(0)
    q, k = torch.randn(3, 5, generator=gen), torch.randn(7, 5, generator=gen)
    torch.testing.assert_close(R.cosine_scores(q, k), F.cosine_similarity(q[:, None], k[None], dim=-1))
    qc, kc = R.centre(q, k)
    torch.testing.assert_close(kc.mean(0), torch.zeros(5), atol=1e-6, rtol=0)
    torch.testing.assert_close(qc, q - k.mean(0), atol=1e-6, rtol=0)  # queries move by the keys' mean too


def test_tfidf_finds_the_shared_words():
    scores = R.tfidf_scores(["the fox swims ."], ["the cat sleeps .", "the fox swims again .", "the foxes swim ."])
    assert R.top_k(scores, 1).item() == 1


def test_vector_store_returns_what_exact_search_returns(tmp_path):
    gen = torch.Generator().manual_seed(0)
    keys, queries = torch.randn(50, 16, generator=gen), torch.randn(5, 16, generator=gen)
    store = R.VectorStore.build(tmp_path / "index.db", keys)
    assert len(store) == 50 and not list(tmp_path.glob(".*.tmp"))  # written atomically
    exact = R.cosine_scores(queries, keys)
    for q, row in zip(queries, exact, strict=True):
        found = store.search(q, 5)
        assert [i for i, _ in found] == R.top_k(row[None], 5)[0].tolist()
        assert R.agrees_with_exact(found, row)
    tied = torch.tensor([1.0, 0.0, 1.0, 0.5])  # rows 0 and 2 tie: either order agrees, a wrong row does not
    assert R.agrees_with_exact([(2, 0.0), (0, 0.0)], tied) and R.agrees_with_exact([(0, 0.0), (2, 0.0)], tied)
    assert not R.agrees_with_exact([(0, 0.0), (3, 0.5)], tied) and not R.agrees_with_exact([(0, 0.0), (0, 0.0)], tied)
    reopened = R.VectorStore(tmp_path / "index.db")
    assert reopened.search(queries[0], 3) == store.search(queries[0], 3)
    with pytest.raises(ValueError, match="one vector of 16"):
        store.search(torch.zeros(3), 1)
    with pytest.raises(FileNotFoundError, match="VectorStore.build"):
        R.VectorStore(tmp_path / "missing.db")
