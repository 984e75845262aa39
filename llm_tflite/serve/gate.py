"""What every request passes on its way in and out: a request id, API keys, per-key limits,
refusal while shutting down, metrics and an access log line.

``Gate`` is plain ASGI middleware (it wraps streaming responses without buffering them, and a
streaming request counts as in flight until its last event). ``Metrics`` holds the server's
Prometheus metrics (``GET /metrics``, ``prometheus_client``'s text format).
"""

from __future__ import annotations

import contextvars
import hmac
import json
import re
import threading
import time
import uuid

from llm_tflite.console import logger

#: The request being served, for log lines written while serving it.
request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")
#: An id a client may send in ``X-Request-ID`` and get back (else one is made).
_CLIENT_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
#: Routes that need a key when keys are set; the page and ``/health`` stay open (a load balancer's probe).
OPEN_ROUTES = ("/", "/health")


def read_api_keys(keys=(), key_file: str | None = None) -> list[str]:
    """Keys given one by one and in a file (one per line; blank lines and ``#`` comments skipped)."""
    from llm_tflite.errors import InvalidArgumentError

    found = [k for k in keys or ()]
    if key_file:
        try:
            with open(key_file, encoding="utf-8") as f:
                found += [line.strip() for line in f if line.strip() and not line.lstrip().startswith("#")]
        except (OSError, UnicodeDecodeError) as e:
            raise InvalidArgumentError(f"cannot read the API key file {key_file!r}: {e}") from e
    for key in found:
        if len(key) < 16 or any(c.isspace() for c in key):
            raise InvalidArgumentError("an API key must be at least 16 characters without spaces "
                                       "(e.g. python -c 'import secrets; print(secrets.token_urlsafe(32))')")
    return found


class Metrics:
    """The server's metrics, in a registry of their own (several apps in one process stay apart)."""

    def __init__(self, pool):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        self.requests = Counter("llm_tflite_requests", "HTTP requests answered", ["route", "status"],
                                registry=self.registry)
        self.latency = Histogram("llm_tflite_request_seconds", "time to answer a request (a stream: to its end)",
                                 ["route"], registry=self.registry,
                                 buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))
        self.tokens = Counter("llm_tflite_tokens", "tokens read (prompt) and written (completion)", ["kind"],
                              registry=self.registry)
        Gauge("llm_tflite_queue_depth", "requests waiting for a free runner", registry=self.registry).set_function(
            lambda: pool.waiting)
        Gauge("llm_tflite_active_slots", "requests being served now", registry=self.registry).set_function(
            lambda: pool.busy)
        Gauge("llm_tflite_slots", "requests that can be served at once (workers x parallel)",
              registry=self.registry).set_function(lambda: pool.slots)
        self.registry.register(_BatchCollector(pool))

    def count_tokens(self, result) -> None:
        """Tokens of a finished generation (``GenerationResult``)."""
        if result is not None:
            self.tokens.labels("prompt").inc(getattr(result, "prompt_tokens", 0))
            self.tokens.labels("completion").inc(getattr(result, "completion_tokens", 0))

    def text(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class _BatchCollector:
    """Batched decode calls and the rows they carried, summed over the runners (their ratio is the
    mean batch: how many requests a decode step served)."""

    def __init__(self, pool):
        self.pool = pool

    def collect(self):
        from prometheus_client.core import CounterMetricFamily

        engines = [e for e in (getattr(runner, "engine", None) for runner in self.pool.runners) if hasattr(e, "rows")]
        steps = CounterMetricFamily("llm_tflite_batch_steps", "decode calls of batching runners (--parallel)")
        steps.add_metric([], sum(engine.steps for engine in engines))
        rows = CounterMetricFamily("llm_tflite_batch_rows", "requests' decode steps those calls carried")
        rows.add_metric([], sum(engine.rows for engine in engines))
        return [steps, rows]


async def _send_json(send, status: int, kind: str, message: str, headers: list) -> None:
    body = json.dumps({"error": {"type": kind, "message": message}}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *headers]})
    await send({"type": "http.response.body", "body": body})


class Gate:
    """ASGI middleware in front of the app (``create_app`` puts it there).

    Args:
        app: the Starlette app (``Middleware(Gate, state=...)``).
        state: the server's ``AppState``: its ``metrics``, ``api_keys``, ``limits.max_streams_per_key``
            and ``draining`` (set on SIGTERM: new requests get 503 while running ones finish).
        routes: the app's paths (others are counted as ``other``).
    """

    def __init__(self, app, state, routes):
        self.app, self.state, self.routes = app, state, set(routes)
        self.metrics = state.metrics
        self.keys = [k.encode() for k in state.api_keys]
        self.max_streams_per_key = state.limits.max_streams_per_key
        self.in_flight: dict[int, int] = {}
        self._lock = threading.Lock()

    def _key_index(self, headers: dict) -> int | None:
        """Which key the request carries (compared in constant time with every key), or None."""
        value = headers.get(b"authorization", b"")
        given = value[7:].strip() if value[:7].lower() == b"bearer " else b""
        found = None
        for i, key in enumerate(self.keys):
            if hmac.compare_digest(given, key):
                found = i
        return found

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        sent_id = headers.get(b"x-request-id", b"").decode("latin-1")
        rid = sent_id if _CLIENT_ID.match(sent_id) else uuid.uuid4().hex[:16]
        path = scope.get("path", "")
        route = path if path in self.routes else "other"
        started, status = time.monotonic(), [500]
        token = request_id.set(rid)
        id_header = (b"x-request-id", rid.encode())

        async def send_with_id(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                message = {**message, "headers": [*message.get("headers", []), id_header]}
            await send(message)

        key = None
        try:
            if self.state.draining:
                await _send_json(send_with_id, 503, "shutting_down", "the server is shutting down; retry elsewhere",
                                 [(b"connection", b"close")])
                return
            if self.keys and path not in OPEN_ROUTES and scope.get("method") != "OPTIONS":
                key = self._key_index(headers)
                if key is None:
                    await _send_json(send_with_id, 401, "unauthorized", "a valid API key is required",
                                     [(b"www-authenticate", b"Bearer")])
                    return
                with self._lock:
                    if self.in_flight.get(key, 0) >= self.max_streams_per_key:
                        key_over = True
                    else:
                        key_over = False
                        self.in_flight[key] = self.in_flight.get(key, 0) + 1
                if key_over:
                    key = None
                    await _send_json(send_with_id, 429, "too_many_requests",
                                     f"this key already has {self.max_streams_per_key} requests in flight", [])
                    return
            await self.app(scope, receive, send_with_id)
        finally:
            if key is not None:
                with self._lock:
                    self.in_flight[key] -= 1
            seconds = time.monotonic() - started
            self.metrics.requests.labels(route, str(status[0])).inc()
            self.metrics.latency.labels(route).observe(seconds)
            logger.info("request %s %s %s -> %d in %.0f ms", rid, scope.get("method"), path, status[0], seconds * 1e3)
            request_id.reset(token)
