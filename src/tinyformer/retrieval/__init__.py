"""Retrieval on the learner's own model (lesson 12): embeddings by pooling, search measured against known
answers, and a context budget shared by several retrievers.

pooling.py     mean / last-token pooling of the final hidden states, written out; ``embed`` texts
collection.py  a generated document collection with known relevant documents; parent and child chunks
search.py      exact cosine search, parents ranked by their best child, recall@k, TF-IDF, a sqlite-vec store
budget.py      the recipe's logistic k, Hamilton apportionment, the Alabama paradox, room in max_model_len
"""

from tinyformer.retrieval.budget import alabama_paradox, context_room, hamilton, logistic_k, parents_per_retriever
from tinyformer.retrieval.collection import (
    Chunk,
    Document,
    Question,
    make_collection,
    pack_sentences,
    parent_child_chunks,
)
from tinyformer.retrieval.pooling import embed, encode, hidden_states, last_token_pool, mean_pool, pool
from tinyformer.retrieval.search import (
    VectorStore,
    agrees_with_exact,
    centre,
    cosine_scores,
    rank_parents,
    recall_at_k,
    tfidf_scores,
    top_k,
)

__all__ = [
    "Chunk",
    "Document",
    "Question",
    "VectorStore",
    "agrees_with_exact",
    "alabama_paradox",
    "centre",
    "context_room",
    "cosine_scores",
    "embed",
    "encode",
    "hamilton",
    "hidden_states",
    "last_token_pool",
    "logistic_k",
    "make_collection",
    "mean_pool",
    "pack_sentences",
    "parent_child_chunks",
    "parents_per_retriever",
    "pool",
    "rank_parents",
    "recall_at_k",
    "tfidf_scores",
    "top_k",
]
