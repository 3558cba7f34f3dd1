"""Talking to an embedding server (``VLLMServer(..., pooling="MEAN")``): /v1/embeddings, once or as a load
whose concurrency an asyncio semaphore caps, like ``client.send_load`` does for completions."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import aiohttp
import httpx
import torch

from tinyformer.serving.client import RequestRejected, image_message, load_session, rejection_message, run_coroutine


def embeddings(server, texts: list[str], *, timeout: float = 120.0) -> torch.Tensor:
    """[N, d] vectors for ``texts`` in one POST /v1/embeddings (vLLM returns them L2-normalised)."""
    response = httpx.post(
        f"{server.api_url}/embeddings",
        json={"model": server.model, "input": list(texts)},
        headers=server.headers,
        timeout=timeout,
    )
    if response.status_code != 200:
        raise RequestRejected(rejection_message(server, response.status_code, response.text))
    rows = sorted(response.json()["data"], key=lambda row: row["index"])
    return torch.tensor([row["embedding"] for row in rows])


def image_embedding(server, images, text: str, *, timeout: float = 120.0) -> tuple[torch.Tensor, int]:
    """(vector [d], prompt tokens) for one user message of ``images`` (uint8 pictures) then ``text``: POST
    /v1/embeddings with chat ``messages`` instead of ``input`` (vLLM applies the chat template, so each picture
    becomes its placeholder tokens, as in a chat request). Needs an embedding server of a vision-language model."""
    response = httpx.post(
        f"{server.api_url}/embeddings",
        json={"model": server.model, "messages": [image_message(images, text)]},
        headers=server.headers,
        timeout=timeout,
    )
    if response.status_code != 200:
        raise RequestRejected(rejection_message(server, response.status_code, response.text))
    body = response.json()
    return torch.tensor(body["data"][0]["embedding"]), body["usage"]["prompt_tokens"]


@dataclass
class EmbeddingLoad:
    vectors: torch.Tensor  # [N, d], in the order of the texts
    concurrency: int
    seconds: float
    tokens: int  # prompt tokens the server counted

    @property
    def texts_per_second(self) -> float:
        return self.vectors.shape[0] / self.seconds

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds


async def send_embedding_load(server, texts: list[str], *, concurrency: int, timeout: float = 600.0) -> EmbeddingLoad:
    """One /v1/embeddings request per text, at most ``concurrency`` in flight (the client's limit)."""
    if concurrency < 1:
        raise ValueError(f"concurrency must be at least 1, got {concurrency}.")
    semaphore = asyncio.Semaphore(concurrency)
    start = time.perf_counter()

    async def one(session: aiohttp.ClientSession, text: str) -> dict:
        async with semaphore:  # waits here while `concurrency` requests are open
            request = {"model": server.model, "input": text}
            async with session.post(f"{server.api_url}/embeddings", json=request) as response:
                if response.status != 200:
                    raise RequestRejected(rejection_message(server, response.status, await response.text()))
                return await response.json()

    async with load_session(server, concurrency, timeout) as session:  # the same connections as send_load's
        replies = await asyncio.gather(*(one(session, t) for t in texts))
    seconds = time.perf_counter() - start
    vectors = torch.tensor([r["data"][0]["embedding"] for r in replies])
    return EmbeddingLoad(vectors, concurrency, seconds, sum(r["usage"]["prompt_tokens"] for r in replies))


def run_embedding_load(server, texts: list[str], *, concurrency: int, **kwargs) -> EmbeddingLoad:
    """``send_embedding_load`` from ordinary code or a Jupyter cell."""
    return run_coroutine(lambda: send_embedding_load(server, texts, concurrency=concurrency, **kwargs))
