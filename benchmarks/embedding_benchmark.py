"""Lesson 12's numbers on this machine: an embedding server (MEAN pooling) on the lesson's model.

    python benchmarks/embedding_benchmark.py [--preset nano] [--repeat 1]

Prints two tables:
  * recall@k on the generated collection: MEAN / LAST pooling, mean-centred, TF-IDF, the contrastive fine-tune;
  * embedding the collection's children through /v1/embeddings at client concurrency 1, 4, 16, 64: texts/s,
    tokens/s and the ratio to concurrency 1; and the largest |vLLM - pooling by hand| over all vectors.
"""

from __future__ import annotations

import argparse

import torch

from tinyformer import retrieval as R
from tinyformer.retrieval.finetune import contrastive_finetune
from tinyformer.serving import VLLMServer, run_embedding_load
from tinyformer.serving.prepare import lesson_export

KS = (1, 3, 5, 10)
CONCURRENCY = (1, 4, 16, 64)


def recall_table(model, tokenizer, questions, parents, children) -> dict[str, list[float]]:
    relevant = [{i for i, p in enumerate(parents) if p.document in q.relevant} for q in questions]
    child_parent = [c.parent for c in children]
    qs, cs = [q.text for q in questions], [c.text for c in children]

    def recalls(scores):
        ranked = R.rank_parents(scores, child_parent, len(parents))
        return [R.recall_at_k(ranked, relevant, k) for k in KS]

    def vectors(m, pooling="mean"):
        return R.embed(m, tokenizer, qs, pooling), R.embed(m, tokenizer, cs, pooling)

    tuned, _ = contrastive_finetune(model, tokenizer, sorted({q.topic for q in questions}))
    return {
        "MEAN": recalls(R.cosine_scores(*vectors(model))),
        "LAST": recalls(R.cosine_scores(*vectors(model, "last"))),
        "MEAN centred": recalls(R.cosine_scores(*R.centre(*vectors(model)))),
        "TF-IDF": recalls(R.tfidf_scores(qs, cs)),
        "MEAN fine-tuned": recalls(R.cosine_scores(*vectors(tuned))),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="nano")
    parser.add_argument("--repeat", type=int, default=1, help="embed the children this many times per level")
    args = parser.parse_args()
    torch.manual_seed(0)
    model, tokenizer, export_dir = lesson_export(args.preset, progress=False)
    documents, questions = R.make_collection()
    parents, children = R.parent_child_chunks(documents, tokenizer, parent_tokens=32, child_tokens=12)

    print(f"{'retriever':18}" + "".join(f"recall@{k:<4}" for k in KS))
    for name, row in recall_table(model, tokenizer, questions, parents, children).items():
        print(f"{name:18}" + "".join(f"{r:<11.3f}" for r in row))

    texts = [c.text for c in children] * args.repeat
    by_hand = R.embed(model, tokenizer, texts)
    with VLLMServer(export_dir, pooling="MEAN", kv_cache_tokens=8192, shared=False, progress=False) as server:
        print(f"\nembedding server ready in {server.ready_seconds:.0f} s; {len(texts)} texts per level")
        run_embedding_load(server, texts[:16], concurrency=16)  # warm-up
        loads = {c: run_embedding_load(server, texts, concurrency=c) for c in CONCURRENCY}
    print(f"{'concurrency':>11} {'texts/s':>9} {'tokens/s':>9} {'vs 1':>6}")
    for c, load in loads.items():
        ratio = load.texts_per_second / loads[1].texts_per_second
        print(f"{c:>11} {load.texts_per_second:9.1f} {load.tokens_per_second:9.0f} {ratio:5.1f}x")
    worst = max((load.vectors - by_hand).abs().max().item() for load in loads.values())
    print(f"largest |vLLM - pooling by hand| = {worst:.1e} (target <= 1e-5)")


if __name__ == "__main__":
    main()
