"""BentoML's request timeout with our fix: the timer ends with its request, the 504 stays."""

from __future__ import annotations

import asyncio
import gc
import json
from typing import Any

from bentoml._internal.server.http.traffic import TimeoutMiddleware

from bentos import runtime


async def _serve(middleware: TimeoutMiddleware, requests: int) -> list[dict[str, Any]]:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    for _ in range(requests):
        await middleware({"type": "http", "path": "/predict"}, receive, send)
    return sent


def _armed_timers(middleware: TimeoutMiddleware) -> list[asyncio.TimerHandle]:
    """Timers still armed by ``middleware`` (other tests' loops may hold timers of their own)."""
    return [
        o
        for o in gc.get_objects()
        if isinstance(o, asyncio.TimerHandle)
        and not o.cancelled()
        and getattr(getattr(o, "_callback", None), "__self__", None) is middleware
    ]


def test_a_request_timer_ends_with_its_request_and_a_slow_one_still_gets_504() -> None:
    runtime.cancel_request_timers()

    async def quick(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    async def slow(scope: Any, receive: Any, send: Any) -> None:
        await asyncio.sleep(5)

    async def run() -> tuple[list[dict[str, Any]], int, list[dict[str, Any]]]:
        middleware = TimeoutMiddleware(quick, timeout=60)
        answered = await _serve(middleware, 50)
        armed = len(_armed_timers(middleware))  # BentoML's own left 50, one per request
        timed_out = await _serve(TimeoutMiddleware(slow, timeout=0.05), 1)
        return answered, armed, timed_out

    # asyncio's own loop, whatever policy another test left: its timers are TimerHandles
    with asyncio.Runner(loop_factory=asyncio.SelectorEventLoop) as runner:
        answered, armed, timed_out = runner.run(run())
    assert [m["status"] for m in answered if m["type"] == "http.response.start"] == [200] * 50
    assert armed == 0
    assert timed_out[0]["status"] == 504
    assert "0.05 seconds" in json.loads(timed_out[1]["body"])["error"]
