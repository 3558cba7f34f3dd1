"""A document collection in the suite's own language with known answers, and its parent/child chunks.

Each document is about one *topic*, a (noun, verb) pair: every sentence has that noun as its subject (singular
or plural) and that verb (agreeing with it), with the grammar's usual prepositional phrases, which mention
other animals, and adverbs. Several documents share a topic; topics share nouns and verbs with each other,
so "the fox ... swims" must be told from "the fox ... sleeps" and from "the cat near the fox swims".
A question is a fresh sentence about one topic; its relevant documents are exactly those of that topic.

Chunks are whole sentences packed greedily up to a token limit, counted with the real tokenizer: small
*children* are what the index searches, larger *parents* are what goes into the prompt.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tinyformer import data


@dataclass(frozen=True)
class Document:
    id: int
    topic: tuple[str, str]  # (noun, verb), base forms
    sentences: tuple[str, ...]

    @property
    def text(self) -> str:
        return " ".join(self.sentences)


@dataclass(frozen=True)
class Question:
    text: str
    topic: tuple[str, str]
    relevant: frozenset[int]  # ids of the documents about this topic


@dataclass(frozen=True)
class Chunk:
    text: str
    n_tokens: int
    document: int  # the document it came from
    parent: int = -1  # for a child: the index of the parent chunk that holds it


def topic_sentence(rng: np.random.Generator, noun: str, verb: str, *, max_pp: int = 2, adverb: bool = True) -> str:
    """One sentence of the grammar whose subject is ``noun`` and whose verb is ``verb``, in a random number."""
    is_plural = rng.random() < data.P_PLURAL
    words = ["the", data.plural(noun) if is_plural else noun]
    for _ in range(int(rng.integers(max_pp + 1))):
        other = data.NOUNS[rng.integers(len(data.NOUNS))]
        other = data.plural(other) if rng.random() < data.P_PLURAL else other
        words += [data.PREPOSITIONS[rng.integers(len(data.PREPOSITIONS))], "the", other]
    words.append(verb if is_plural else data.third_person(verb))  # agreement with the subject
    if adverb and rng.random() < data.P_ADVERB:
        words.append(data.ADVERBS[rng.integers(len(data.ADVERBS))])
    return " ".join(words + ["."])


def make_collection(
    n_topics: int = 12, docs_per_topic: int = 3, sentences_per_doc: int = 6, questions_per_topic: int = 2, seed: int = 0
) -> tuple[list[Document], list[Question]]:
    """Documents and questions with known relevant documents. Topics are distinct (noun, verb) pairs drawn so
    that nouns and verbs recur across topics; documents are shuffled so ids say nothing about topics."""
    n_pairs = len(data.NOUNS) * len(data.VERBS)
    if not 1 <= n_topics <= n_pairs:
        raise ValueError(f"n_topics must be between 1 and {n_pairs} (nouns x verbs), got {n_topics}.")
    for name, value in (("docs_per_topic", docs_per_topic), ("sentences_per_doc", sentences_per_doc)):
        if value < 1:
            raise ValueError(f"{name} must be at least 1, got {value}.")
    rng = np.random.default_rng(seed)
    pairs = rng.choice(n_pairs, size=n_topics, replace=False)
    topics = [(data.NOUNS[p // len(data.VERBS)], data.VERBS[p % len(data.VERBS)]) for p in pairs]
    drafts = [
        (topic, tuple(topic_sentence(rng, *topic) for _ in range(sentences_per_doc)))
        for topic in topics
        for _ in range(docs_per_topic)
    ]
    order = rng.permutation(len(drafts))
    documents = [Document(i, *drafts[j]) for i, j in enumerate(order)]
    questions = [
        Question(
            topic_sentence(rng, *topic, max_pp=0, adverb=False),
            topic,
            frozenset(d.id for d in documents if d.topic == topic),
        )
        for topic in topics
        for _ in range(questions_per_topic)
    ]
    return documents, questions


def pack_sentences(sentences: list[str], tokenizer, max_tokens: int) -> list[tuple[list[str], int]]:
    """Whole sentences packed greedily into groups of at most ``max_tokens`` tokens: [(sentences, tokens)]."""
    groups, current, size = [], [], 0
    for sentence in sentences:
        n = len(tokenizer.encode(sentence, add_special_tokens=False))
        if n > max_tokens:
            raise ValueError(
                f"a sentence of {n} tokens does not fit a chunk of max_tokens={max_tokens}; raise max_tokens to at "
                f"least {n}: {sentence!r}"
            )
        if current and size + n > max_tokens:
            groups.append((current, size))
            current, size = [], 0
        current.append(sentence)
        size += n
    if current:
        groups.append((current, size))
    return groups


def parent_child_chunks(
    documents: list[Document], tokenizer, *, parent_tokens: int, child_tokens: int
) -> tuple[list[Chunk], list[Chunk]]:
    """(parents, children): each document cut into parents of at most ``parent_tokens``, each parent into
    children of at most ``child_tokens``; a child remembers its parent's index."""
    if not 0 < child_tokens <= parent_tokens:
        raise ValueError(f"need 0 < child_tokens <= parent_tokens, got {child_tokens} and {parent_tokens}.")
    parents, children = [], []
    for doc in documents:
        for group, n in pack_sentences(list(doc.sentences), tokenizer, parent_tokens):
            parents.append(Chunk(" ".join(group), n, doc.id))
            for sentences, m in pack_sentences(group, tokenizer, child_tokens):
                children.append(Chunk(" ".join(sentences), m, doc.id, parent=len(parents) - 1))
    return parents, children
