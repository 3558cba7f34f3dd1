"""Talking to the server: single completions through the official ``openai`` client, the tokenizer
endpoint, and an asyncio load generator whose concurrency is capped by a semaphore.

The load generator sends each prompt as its own HTTP request; vLLM decides how to batch them. The
semaphore is the *client's* limit: at most ``concurrency`` requests are in flight at any moment.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from dataclasses import dataclass, field

import aiohttp
import httpx
import openai


class RequestRejected(ValueError):
    """The server answered a request with an error; the message says why and what to change."""


@dataclass
class Reply:
    prompt: str
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    prompt_token_ids: list[int] = field(default_factory=list)
    finish_reason: str | None = None
    sent: float = 0.0  # seconds since the load started
    done: float = 0.0
    first_token: float | None = None  # when the first token arrived (streamed requests only)
    error: str | None = None
    thread_id: int | None = None  # the thread that sent it: the load generator's coroutines all share one

    @property
    def latency(self) -> float:
        return self.done - self.sent

    @property
    def ttft(self) -> float | None:
        """Time to first token: from sending to the first streamed token (None unless streamed)."""
        return None if self.first_token is None else self.first_token - self.sent


@dataclass
class LoadResult:
    replies: list[Reply]  # in the order of the prompts
    concurrency: int
    seconds: float  # wall time of the whole load

    @property
    def failures(self) -> list[Reply]:
        return [r for r in self.replies if r.error is not None]

    @property
    def completion_tokens(self) -> int:
        return sum(len(r.token_ids) for r in self.replies)

    @property
    def tokens_per_second(self) -> float:
        """Generated tokens per second of wall time (the server's output throughput)."""
        return self.completion_tokens / self.seconds

    @property
    def max_in_flight(self) -> int:
        """Most requests that were open at the same time (at most ``concurrency``)."""
        events = sorted([(r.sent, 1) for r in self.replies] + [(r.done, -1) for r in self.replies])
        open_now = peak = 0
        for _, step in events:
            open_now += step
            peak = max(peak, open_now)
        return peak


def rejection_message(server, status: int, body: str) -> str:
    """The server's error, plus what it means for this server's limits."""
    message = f"the server refused the request (HTTP {status}): {body}"
    if "maximum context length" in body:
        message += (
            f"\n  This server's max_model_len is {server.max_model_len} tokens (prompt + output). Shorten the prompt, "
            f"or start the server with a larger max_model_len (at most the model's n_positions="
            f"{server.config.n_positions})."
        )
    if status == 401:
        message += "\n  The server has an API key: pass it (VLLMServer(..., api_key=...) or $TINYFORMER_VLLM_API_KEY)."
    return message


def complete(server, prompt: str, *, max_tokens: int = 16, temperature: float = 0.0, **extra) -> Reply:
    """One completion through the official ``openai`` client (greedy by default), with token ids."""
    client = server.client()
    try:
        response = client.completions.create(
            model=server.model,
            prompt=prompt,
            max_tokens=max_tokens,
            temperature=temperature,
            extra_body={"return_token_ids": True, **extra},
        )
    except openai.APIStatusError as e:
        raise RequestRejected(rejection_message(server, e.status_code, e.response.text)) from None
    choice = response.choices[0]
    extras = choice.model_extra or {}
    return Reply(
        prompt=prompt,
        text=choice.text,
        token_ids=list(extras.get("token_ids") or []),
        prompt_token_ids=list(extras.get("prompt_token_ids") or []),
        finish_reason=choice.finish_reason,
    )


def tokenize(server, text: str) -> list[int]:
    """Token ids the server's tokenizer gives ``text`` (POST /tokenize, no special tokens added)."""
    response = httpx.post(
        f"{server.url}/tokenize",
        json={"model": server.model, "prompt": text, "add_special_tokens": False},
        headers=server.headers,
        timeout=30.0,
    )
    if response.status_code != 200:
        raise RequestRejected(rejection_message(server, response.status_code, response.text))
    return response.json()["tokens"]


def load_session(server, concurrency: int, timeout: float) -> aiohttp.ClientSession:
    """The HTTP session a load goes through (open it inside the load's event loop): at most ``concurrency``
    connections, kept alive from request to request, as vLLM's own benchmark client keeps them. With httpx and a fresh
    connection per request, this client spent enough CPU, on two cores shared with the server, to measure ~30 % less
    throughput than vLLM's client on the same trace at 16 and 64 requests in flight (benchmarks/bench_clients.py)."""
    return aiohttp.ClientSession(
        headers=server.headers,
        timeout=aiohttp.ClientTimeout(total=timeout),
        connector=aiohttp.TCPConnector(limit=concurrency),
    )


async def send_load(
    server,
    prompts: list[str],
    *,
    concurrency: int,
    max_tokens: int = 32,
    temperature: float = 0.0,
    timeout: float = 600.0,
    models: list[str] | None = None,
    stream: bool = False,
    **extra,
) -> LoadResult:
    """Send every prompt as its own /v1/completions request, at most ``concurrency`` at a time.

    models: the model each prompt names (default: the server's), e.g. LoRA adapters' names for a mixed batch.
    stream: ask for server-sent events, as chat clients (and vLLM's benchmark client) do; each reply then also
        records when its first token arrived (``Reply.ttft``)."""
    if concurrency < 1:
        raise ValueError(f"concurrency must be at least 1, got {concurrency}.")
    models = [server.model] * len(prompts) if models is None else list(models)
    if len(models) != len(prompts):
        raise ValueError(f"models names {len(models)} models for {len(prompts)} prompts: give one per prompt.")
    semaphore = asyncio.Semaphore(concurrency)  # the client-side cap on requests in flight
    body = {"max_tokens": max_tokens, "temperature": temperature, "return_token_ids": True}
    start = time.perf_counter()

    async def one(session: aiohttp.ClientSession, prompt: str, model: str) -> Reply:
        async with semaphore:  # waits here while `concurrency` requests are already open
            reply = Reply(prompt=prompt, sent=time.perf_counter() - start, thread_id=threading.get_ident())
            request = {**body, **extra, "prompt": prompt, "model": model} | ({"stream": True} if stream else {})
            try:
                async with session.post(f"{server.api_url}/completions", json=request) as response:
                    if response.status != 200:
                        reply.error = rejection_message(server, response.status, await response.text())
                    elif stream:
                        await _read_events(reply, response, start)
                    else:
                        _fill(reply, (await response.json())["choices"][0])
            except (TimeoutError, aiohttp.ClientError) as e:  # refused, dropped or too slow
                reply.error = f"{type(e).__name__}: {e}"
            reply.done = time.perf_counter() - start
            return reply

    async with load_session(server, concurrency, timeout) as session:
        replies = await asyncio.gather(*(one(session, p, m) for p, m in zip(prompts, models, strict=True)))
    return LoadResult(list(replies), concurrency, time.perf_counter() - start)


def run_load(server, prompts: list[str], *, concurrency: int, raise_on_error: bool = True, **kwargs) -> LoadResult:
    """``send_load`` from ordinary (non-async) code, including a Jupyter cell whose event loop is running."""
    result = run_coroutine(lambda: send_load(server, prompts, concurrency=concurrency, **kwargs))
    if raise_on_error and result.failures:
        first = result.failures[0]
        raise RequestRejected(f"{len(result.failures)} of {len(prompts)} requests failed; the first: {first.error}")
    return result


def _fill(reply: Reply, choice: dict) -> None:
    reply.text, reply.finish_reason = choice["text"], choice["finish_reason"]
    reply.token_ids = list(choice.get("token_ids") or [])
    reply.prompt_token_ids = list(choice.get("prompt_token_ids") or [])


async def _read_events(reply: Reply, response: aiohttp.ClientResponse, start: float) -> None:
    """A streamed completion: server-sent events, one ``data: {json}`` line per piece, ``data: [DONE]`` last."""
    async for raw in response.content:  # line by line, as the pieces arrive
        line = raw.decode().strip()
        if not line.startswith("data: ") or line == "data: [DONE]":
            continue
        piece = json.loads(line[len("data: ") :])
        if "error" in piece:  # vLLM's error event: the stream ends without a finish_reason
            reply.error = f"the server ended the stream with an error: {piece['error']}"
            return
        if not piece.get("choices"):  # the usage summary asked for by stream_options={"include_usage": True}
            continue
        choice = piece["choices"][0]
        if choice.get("token_ids") and reply.first_token is None:
            reply.first_token = time.perf_counter() - start
        reply.text += choice.get("text") or ""
        reply.token_ids += choice.get("token_ids") or []
        reply.prompt_token_ids = choice.get("prompt_token_ids") or reply.prompt_token_ids
        reply.finish_reason = choice.get("finish_reason") or reply.finish_reason


def run_coroutine(make_coroutine):
    """Run the coroutine ``make_coroutine()`` makes and return its result, from synchronous code.

    In a Jupyter cell an event loop is already running in this thread, so the coroutine runs in a
    helper thread with its own loop; the interrupt button (KeyboardInterrupt here) cancels it there,
    which closes its connections, instead of waiting for the whole load to finish."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:  # no loop in this thread: the usual case in scripts and tests
        return asyncio.run(make_coroutine())
    state: dict = {}

    async def main():
        state["loop"], state["task"] = asyncio.get_running_loop(), asyncio.current_task()
        return await make_coroutine()

    def target() -> None:
        try:
            state["result"] = asyncio.run(main())
        except BaseException as error:  # handed to the caller below
            state["error"] = error

    thread = threading.Thread(target=target, name="tinyformer-load", daemon=True)
    thread.start()
    try:
        while thread.is_alive():
            thread.join(0.1)
    except KeyboardInterrupt:
        if "task" in state:
            state["loop"].call_soon_threadsafe(state["task"].cancel)
        thread.join(10.0)
        raise
    if "error" in state:
        raise state["error"]
    return state["result"]


def png_data_url(image) -> str:
    """A picture (uint8 [H, W, 3]) as the base64 PNG data URL the OpenAI vision chat API takes."""
    import base64
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def image_message(images, text: str) -> dict:
    """One user message: ``images`` (uint8 pictures) as PNG data URLs, then ``text`` (the OpenAI vision chat form,
    which vLLM's /v1/chat/completions and /v1/embeddings both take)."""
    content = [{"type": "image_url", "image_url": {"url": png_data_url(image)}} for image in images]
    content.append({"type": "text", "text": text})
    return {"role": "user", "content": content}


def chat_with_images(
    server, images, text: str, *, max_tokens: int = 8, temperature: float = 0.0, token_ids: bool = False
):
    """One user message of ``images`` (uint8 pictures) then ``text`` to /v1/chat/completions; the raw response.

    token_ids: ask vLLM for the ids too (its ``return_token_ids``): ``reply.prompt_token_ids``, with each image's
    placeholders expanded, and ``reply.choices[0].token_ids``, the generated ids (EOS included when it stopped
    there)."""
    return server.client().chat.completions.create(
        model=server.model,
        messages=[image_message(images, text)],
        max_tokens=max_tokens,
        temperature=temperature,
        extra_body={"return_token_ids": True} if token_ids else None,
    )
