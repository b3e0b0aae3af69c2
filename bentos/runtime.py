"""What every service here needs BentoML to do differently; each gateway and model
service applies it.

**The answer's media type, declared** (:data:`JSON`, on the return annotation). Without
one, BentoML builds the answer's JSON schema for every response to find its media type:
a tenth of a gateway worker's CPU under load.

**BentoML's per-request timeout, with its timer gone when the request is.** BentoML 1.4's
``TimeoutMiddleware`` arms ``loop.call_later(timeout, ...)`` for every request and never
cancels it. The timer holds the request's context (its tracing span, futures, about 20
objects) until the timeout passes: 60 s by default. At 450 requests a second a gateway
worker carried some 30,000 of them. They are new objects, so the frozen heap
(``fleet.serving.settle_heap``) does not cover them, and the collector's oldest
generation, whose collections stop every request on the worker, grew with them: its
pauses went from 13 to 49 ms within seconds, one every 1.3 s.
:func:`cancel_request_timers` makes the middleware cancel its timer once the response
has started (or the timeout has answered). Nothing else changes: a request that has not
started its response within the timeout still gets BentoML's 504.
"""

from __future__ import annotations

import asyncio
from typing import Any

from bentoml._internal.server.http.traffic import TimeoutMiddleware
from bentoml.validators import ContentType
from starlette.responses import JSONResponse

JSON = ContentType("application/json")


async def _call(self: Any, scope: Any, receive: Any, send: Any) -> None:
    if scope["type"] not in ("http", "websocket"):
        return await self.app(scope, receive, send)
    loop = asyncio.get_running_loop()
    started = loop.create_future()
    timer = loop.call_later(self.timeout, self._set_timer_out, started)

    async def send_started(message: Any) -> None:
        if not started.done():
            started.set_result(None)
        await send(message)

    handler = asyncio.ensure_future(self.app(scope, receive, send_started))
    try:
        await started
    except TimeoutError:
        if handler.cancel():
            error = {"error": f"Not able to process the request in {self.timeout} seconds"}
            await JSONResponse(error, status_code=504)(scope, receive, send)
        return
    finally:
        timer.cancel()  # the one change: the timer does not outlive its request
    await handler


def cancel_request_timers() -> None:
    """Install the fix on BentoML's middleware class, once per process (each service's
    ``__init__`` calls it). A BentoML whose middleware has another shape is left alone."""
    if TimeoutMiddleware.__call__ is _call or not hasattr(TimeoutMiddleware, "_set_timer_out"):
        return
    TimeoutMiddleware.__call__ = _call  # type: ignore[method-assign]
