"""Finding the nearest texts: exact cosine search (the reference), parents ranked by their best child,
recall@k against known answers, a lexical baseline (TF-IDF), and an index persisted in sqlite-vec.

Python builds often lack SQLite extension loading (``sqlite3.Connection.enable_load_extension``), so the
store opens SQLite through ``apsw``, which ships its own SQLite with extension loading on.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from tinyformer.paths import atomic_file


def cosine_scores(queries: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """[Q, d], [N, d] -> [Q, N] cosine similarities."""
    return F.normalize(queries.float(), dim=-1) @ F.normalize(keys.float(), dim=-1).T  # [Q, N]


def top_k(scores: torch.Tensor, k: int) -> torch.Tensor:
    """[Q, N] scores -> [Q, k] indices, best first; equal scores keep index order (a stable sort)."""
    if not 1 <= k <= scores.shape[-1]:
        raise ValueError(f"k must be between 1 and the number of candidates ({scores.shape[-1]}), got {k}.")
    return torch.sort(-scores, dim=-1, stable=True).indices[:, :k]


def rank_parents(child_scores: torch.Tensor, child_parent: list[int], n_parents: int) -> torch.Tensor:
    """[Q, C] child scores -> [Q, n_parents] parent indices, best first: a parent scores as its best child."""
    index = torch.tensor(child_parent).expand_as(child_scores)  # [Q, C]
    best = torch.full((child_scores.shape[0], n_parents), -torch.inf)  # [Q, P]
    best = best.scatter_reduce(1, index, child_scores.float(), reduce="amax")  # [Q, P]
    return top_k(best, n_parents)


def recall_at_k(ranked, relevant: list[set[int]] | list[frozenset[int]], k: int) -> float:
    """Mean over questions of |relevant ∩ first k ranked| / |relevant|."""
    if len(ranked) != len(relevant):
        raise ValueError(f"{len(ranked)} rankings for {len(relevant)} questions: give one ranking per question.")
    hits = [len(set(map(int, r[:k])) & set(rel)) / len(rel) for r, rel in zip(ranked, relevant, strict=True)]
    return float(np.mean(hits))


def agrees_with_exact(found: list[tuple[int, float]], scores: torch.Tensor, atol: float = 1e-5) -> bool:
    """An index's answer ``[(row, cosine distance)]`` is exact search's, up to the order of equal scores: distinct
    rows, each reported similarity is that row's exact score, and they are the ``len(found)`` best scores."""
    rows = [i for i, _ in found]
    reported = torch.tensor([1 - d for _, d in found])  # cosine distance -> similarity
    exact = scores[rows].float()
    best = torch.sort(scores.float(), descending=True).values[: len(found)]
    return (
        len(set(rows)) == len(rows)
        and torch.allclose(reported, exact, atol=atol)
        and torch.allclose(exact, best, atol=atol)
    )


def centre(queries: torch.Tensor, keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Subtract the keys' mean vector from both: the direction every text shares says nothing about any one."""
    mean = keys.mean(dim=0, keepdim=True)  # [1, d]
    return queries - mean, keys - mean


def tfidf_scores(queries: list[str], texts: list[str]) -> torch.Tensor:
    """[Q, N] cosine similarities of TF-IDF vectors (scikit-learn), fitted on ``texts``."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    vectorizer = TfidfVectorizer(token_pattern=r"\S+")  # words as the tokenizer splits them, "." included
    keys = vectorizer.fit_transform(texts)  # rows are L2-normalised
    return torch.from_numpy((vectorizer.transform(queries) @ keys.T).toarray()).float()


VEC0_MAX_K = 4096  # sqlite-vec's vec0 refuses a KNN query for more neighbours than this


class VectorStore:
    """An embedded vector index on disk: a sqlite-vec ``vec0`` table with cosine distance, one row per vector.

    ``VectorStore.build(path, vectors)`` writes the file atomically (a temp file in the same folder, then a
    rename); ``store.search(query, k)`` returns [(row, distance)] with distance = 1 - cosine similarity.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(
                f"no vector store at {self.path}; create one with VectorStore.build(path, vectors)."
            )
        self.db = _connect(self.path)
        self.dim = self._read_dim()

    @classmethod
    def build(cls, path: str | Path, vectors: torch.Tensor) -> VectorStore:
        if vectors.dim() != 2 or vectors.shape[0] == 0:
            raise ValueError(f"vectors must be a non-empty [N, d] tensor, got shape {list(vectors.shape)}.")
        path = Path(path)
        with atomic_file(path) as tmp:
            db = _connect(tmp)
            with db:  # one transaction
                db.execute("CREATE TABLE meta(key TEXT PRIMARY KEY, value)")
                db.execute("INSERT INTO meta VALUES ('dim', ?)", (vectors.shape[1],))
                column = f"embedding float[{vectors.shape[1]}] distance_metric=cosine"
                db.execute(f"CREATE VIRTUAL TABLE vectors USING vec0({column})")
                rows = ((i, _blob(v)) for i, v in enumerate(vectors))
                db.executemany("INSERT INTO vectors(rowid, embedding) VALUES (?, ?)", rows)
            db.close()
        return cls(path)

    def _read_dim(self) -> int:
        import apsw

        try:
            row = self.db.execute("SELECT value FROM meta WHERE key = 'dim'").fetchone()
        except (apsw.NotADBError, apsw.SQLError) as error:  # not SQLite at all; SQLite without our tables
            problem = str(error)
        else:
            if row is not None:
                return row[0]
            problem = "no dimension recorded"
        self.db.close()
        raise ValueError(
            f"{self.path} is not a vector store written by VectorStore.build ({problem}); pass the file build "
            "wrote, or build one with VectorStore.build(path, vectors)."
        )

    def search(self, query: torch.Tensor, k: int) -> list[tuple[int, float]]:
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= VEC0_MAX_K:
            raise ValueError(
                f"k must be a whole number from 1 to {VEC0_MAX_K} (sqlite-vec's limit), got {k!r}; the store "
                f"holds {len(self)} vectors."
            )
        if query.shape != (self.dim,):
            raise ValueError(f"query must be one vector of {self.dim} numbers, got shape {list(query.shape)}.")
        sql = "SELECT rowid, distance FROM vectors WHERE embedding MATCH ? AND k = ? ORDER BY distance"
        return [(int(r), float(d)) for r, d in self.db.execute(sql, (_blob(query), k))]

    def __len__(self) -> int:
        return self.db.execute("SELECT count(*) FROM vectors").fetchone()[0]

    def close(self) -> None:
        self.db.close()


def _connect(path: Path):
    import apsw
    import sqlite_vec

    db = apsw.Connection(str(path))
    db.enable_load_extension(True)
    db.load_extension(sqlite_vec.loadable_path())
    db.enable_load_extension(False)  # only the one extension we chose
    return db


def _blob(vector: torch.Tensor) -> bytes:
    return vector.detach().float().cpu().numpy().astype(np.float32).tobytes()  # vec0's float32 layout
