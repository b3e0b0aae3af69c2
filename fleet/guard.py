"""The door of every fleet service: token, content type and body size, before any work.

A plain ASGI middleware, added to the gateway and to every model service
(``add_asgi_middleware``), so its checks run before BentoML reads or parses a body:

- with a token configured (``FLEET_API_TOKEN`` or ``FLEET_API_TOKEN_FILE``), every
  request but the health checks needs ``Authorization: Bearer <token>`` (401 otherwise;
  compared in constant time);
- a POST to a prediction route must say ``Content-Type: application/json`` (415): a
  browser's cross-origin "simple" request (``text/plain``, a form) never reaches the
  model or the prediction log;
- a body larger than ``FLEET_MAX_BODY_BYTES`` is refused with 413: at once when
  ``Content-Length`` says so, else as soon as the streamed bytes pass the cap, so
  memory stays flat whatever a client sends.

Errors are JSON ``{"error": "<what and what to do>"}``, the shape BentoML gives its own
400s, so every error of a fleet service reads the same.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]

# BentoML's health and metrics endpoints answer without a token (probes, scrapers)
OPEN_PATHS = frozenset({"/livez", "/readyz", "/healthz", "/metrics"})


async def _reply(send: Send, status: int, error: str, detail: str, headers: tuple = ()) -> None:
    body = json.dumps({"error": f"{error}: {detail}"}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class Guard:
    """ASGI middleware; ``json_paths``: routes whose POST body must be JSON."""

    def __init__(
        self,
        app: App,
        token: str | None = None,
        max_body_bytes: int = 8 * 1024 * 1024,
        json_paths: tuple[str, ...] = ("/predict", "/predict_batch"),
    ) -> None:
        self.app = app
        self.token = token.encode() if token else None
        self.max_body = max_body_bytes
        self.json_paths = frozenset(json_paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        headers = {k.lower(): v for k, v in scope.get("headers", [])}
        if self.token is not None and path not in OPEN_PATHS:
            given = headers.get(b"authorization", b"")
            scheme, _, value = given.partition(b" ")
            if scheme.lower() != b"bearer" or not hmac.compare_digest(value.strip(), self.token):
                await _reply(
                    send, 401, "unauthorized",
                    "send the fleet's API token: Authorization: Bearer <FLEET_API_TOKEN>",
                    headers=((b"www-authenticate", b'Bearer realm="modelfleet"'),),
                )  # fmt: skip
                return
        if scope.get("method") == "POST" and path in self.json_paths:
            kind = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
            if kind != b"application/json":
                await _reply(
                    send, 415, "unsupported media type",
                    f"{path} takes Content-Type: application/json, not "
                    f"{kind.decode(errors='replace') or 'none'}",
                )  # fmt: skip
                return
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body:
            await _reply(send, 413, "body too large", self._too_large())
            return
        await self._capped(scope, receive, send)

    def _too_large(self) -> str:
        return (
            f"the request body is over {self.max_body:,} bytes (FLEET_MAX_BODY_BYTES); "
            "send fewer records per request"
        )

    async def _capped(self, scope: Scope, receive: Receive, send: Send) -> None:
        """A body of unknown length (chunked) is read here first, at most the cap, then
        handed on: an endless stream costs ``max_body_bytes`` of memory, never more."""
        headers = {k.lower(): v for k, v in scope.get("headers", [])}
        if b"content-length" in headers or scope.get("method") in ("GET", "HEAD"):
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        seen = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            chunk = message.get("body", b"")
            seen += len(chunk)
            if seen > self.max_body:
                await _reply(send, 413, "body too large", self._too_large())
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)
