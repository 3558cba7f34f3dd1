"""The API key on every route of a vLLM server that listens on the network, not only on ``/v1``.

vLLM's ``--api-key`` (or ``$VLLM_API_KEY``) installs its ``AuthenticationMiddleware``, which checks the key only
on paths under ``/v1``, ``/v2``, ``/inference`` and ``/cohere``: ``/tokenize``, ``/detokenize``, ``/invocations``,
``/metrics``, ``/load``, ``/version``, ``/ping``, the OpenAPI docs and more stay open (``tests/test_serving_routes.py``
lists them against the installed vLLM). vLLM also takes ``--middleware IMPORT.PATH``, an ASGI class it wraps
around the whole app; this module's :class:`KeyOnEveryRoute` is that class. It reuses vLLM's own token check
(constant-time, SHA-256 of each key) and differs in one place: every path needs the key except ``GET /health``,
which answers an empty 200 and nothing else, so that a learner's laptop and the lessons can see the server is up.

The vLLM process imports this module (``--middleware tinyformer.serving.guard.KeyOnEveryRoute``) and reads the
key from ``$VLLM_API_KEY``, the same variable vLLM's own middleware reads; no key ever travels on a command line.
"""

from __future__ import annotations

import os

from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from vllm.entrypoints.serve.middleware.authenticate import AuthenticationMiddleware

OPEN_ROUTES = (("GET", "/health"),)  # liveness only: an empty body, no model, no engine state


class KeyOnEveryRoute(AuthenticationMiddleware):
    """vLLM's authentication middleware, applied to every path but ``GET /health``."""

    def __init__(self, app) -> None:
        key = os.environ.get("VLLM_API_KEY")
        if not key:  # refuse to start an unguarded network server rather than serve it open
            raise RuntimeError("KeyOnEveryRoute needs $VLLM_API_KEY: the server would otherwise be open.")
        super().__init__(app, tokens=[key])

    def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket"):  # lifespan events: no request to check
            return self.app(scope, receive, send)
        path = scope["path"].removeprefix(scope.get("root_path", ""))
        if (scope.get("method"), path) in OPEN_ROUTES or self.verify_token(Headers(scope=scope)):
            return self.app(scope, receive, send)
        return JSONResponse(content={"error": "Unauthorized"}, status_code=401)(scope, receive, send)
