"""The HTTP API and the app screen, on Starlette.

Routes:
    ``GET /``                  the autocomplete app's screen (``static/index.html``)
    ``POST /v1/autocomplete``  ``{text, window_words, max_new_tokens, sampler, seed, ...}`` ->
                               ``{suggestion, words, finish_reason}``, or an error of type
                               ``bad_language`` / ``no_suggestion`` / ``context`` (HTTP 422);
                               ``"stream": true`` sends server-sent events as words come
    ``POST /v1/completions``   OpenAI's completions API (``prompt``, ``max_tokens``,
                               ``temperature``, ``top_p``, ``stop``, ``seed``, ``stream``)
    ``POST /v1/chat/completions``  OpenAI's chat completions API (``messages``, the same options,
                               ``response_format`` ``json_object`` / ``json_schema``, ``stream``
                               with ``stream_options.include_usage``); each runner keeps the KV
                               caches of recent conversations, so a client sending its history
                               again prefills only the new tokens (``usage.prompt_tokens_details``)
    ``GET /health``            ``{"status": "ok", "workers", "parallel", "busy"}``
    ``GET /v1/models``         the file, OpenAI-style, with its metadata
    ``GET /metrics``           Prometheus metrics (``llm_tflite.serve.gate.Metrics``)

In front of every route, ``llm_tflite.serve.gate.Gate``: a request id (``X-Request-ID``), API keys
(``Authorization: Bearer``) for every route but ``/`` and ``/health`` when keys are set, a limit of
requests in flight per key, 503 while shutting down, metrics and an access log line. CORS is
closed unless origins are named (``cors_origins``).

Every request runs on a runner borrowed from a ``RunnerPool``; one that cannot get a runner
in time gets 503. Errors are JSON ``{"error": {"type", "message"}}``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import threading
import time
import uuid

from llm_tflite.errors import ContextLengthError, InvalidArgumentError, LLMTFLiteError, RuntimeFailure
from llm_tflite.serve.pool import Overloaded, RunnerPool

STATIC = os.path.join(os.path.dirname(__file__), "static")


@dataclasses.dataclass
class Limits:
    """What one request may ask for (``llm-tflite serve`` options)."""

    max_body_bytes: int = 64 * 1024
    max_prompt_chars: int = 8_000
    max_tokens: int = 256
    #: most candidates a search may keep per step (``num_beams``, contrastive ``top_k``): each is a copy
    #: of the KV cache
    max_search_width: int = 8
    #: conversations whose KV caches each runner keeps for clients that send their history again
    chat_cache: int = 4
    wait_seconds: float = 30.0
    max_waiting: int | None = None  # default: 4 per slot (workers x parallel), at most 24
    #: requests one API key may have in flight at once (with keys)
    max_streams_per_key: int = 4


class RequestError(Exception):
    """A request the server refuses: HTTP ``status`` with a typed JSON error."""

    def __init__(self, status: int, kind: str, message: str):
        super().__init__(message)
        self.status, self.kind, self.message = status, kind, message


def _error(status: int, kind: str, message: str):
    from starlette.responses import JSONResponse

    return JSONResponse({"error": {"type": kind, "message": message}}, status_code=status)


async def _json_body(request, limits: Limits) -> dict:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limits.max_body_bytes:
        raise RequestError(413, "too_large", f"the body is over {limits.max_body_bytes} bytes")
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > limits.max_body_bytes:
            raise RequestError(413, "too_large", f"the body is over {limits.max_body_bytes} bytes")
    try:
        value = json.loads(body or b"null")
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RequestError(400, "invalid_json", f"the body is not valid JSON: {e}") from None
    if not isinstance(value, dict):
        raise RequestError(400, "invalid_request", "the body must be a JSON object")
    return value


def _field(body: dict, name: str, kind, default=None, *, low=None, high=None):
    value = body.get(name, default)
    if value is None:
        return default
    numeric = kind in (int, float)
    ok = isinstance(value, kind) and not isinstance(value, bool) if kind is not float else (
        isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value))
    if not ok or (numeric and ((low is not None and value < low) or (high is not None and value > high))):
        bounds = f" from {low} to {high}" if numeric and low is not None and high is not None else ""
        raise RequestError(400, "invalid_request", f"{name!r} must be a {kind.__name__}{bounds}, got {value!r}")
    return value


def _prompt(body: dict, name: str, limits: Limits) -> str:
    value = body.get(name)
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], str):
        value = value[0]  # OpenAI clients may send a one-prompt list
    if not isinstance(value, str):
        raise RequestError(400, "invalid_request", f"{name!r} must be a string")
    if len(value) > limits.max_prompt_chars:
        raise RequestError(413, "too_large", f"{name!r} is over {limits.max_prompt_chars} characters")
    return value


def _sse(data) -> bytes:
    return f"data: {data if isinstance(data, str) else json.dumps(data)}\n\n".encode()


@dataclasses.dataclass
class AppState:
    """What every handler reads: the runners, the limits and the model's name (``app.state.llm``)."""

    pool: RunnerPool
    limits: Limits
    model_id: str
    created: int
    metrics: object = None
    api_keys: tuple = ()
    #: set when the server is asked to stop (SIGTERM): new requests get 503, running ones finish
    draining: bool = False
    #: the streams' items on their way to the event loop (``_Deliveries``)
    deliveries: object = None


def _state(request) -> AppState:
    return request.app.state.llm


async def _borrow(state: AppState):
    from starlette.concurrency import run_in_threadpool

    try:
        return await run_in_threadpool(state.pool.take)
    except Overloaded as e:
        raise RequestError(503, "overloaded", f"the server is busy ({e}); retry later") from None


async def _run(state: AppState, fn):
    """``fn(runner)`` in a thread, on a runner borrowed for the call."""
    from starlette.concurrency import run_in_threadpool

    runner = await _borrow(state)
    try:
        return await run_in_threadpool(fn, runner)
    finally:
        state.pool.give_back(runner)


_END = object()


class _Deliveries:
    """Items the pumps' threads hand to one event loop, delivered together: the first item waiting
    schedules one callback (``call_soon_threadsafe``, a write to the loop's self-pipe that wakes it),
    and the items that arrive before it runs go with it. A batched step gives every stream its token
    at about the same moment; a write and a wake-up per token were most of the pumps' own CPU time
    (2026-12-04: 26 of 46 samples of their threads in ``py-spy`` at 8 clients)."""

    @staticmethod
    def of(state: "AppState") -> "_Deliveries":
        """(On the event loop) the app's deliveries to the running loop."""
        import asyncio

        loop, deliveries = asyncio.get_running_loop(), state.deliveries
        if deliveries is None or deliveries.loop is not loop:  # an app served from another loop keeps its own
            deliveries = state.deliveries = _Deliveries(loop)
        return deliveries

    def __init__(self, loop):
        self.loop, self.lock, self.waiting = loop, threading.Lock(), []

    def put(self, queue, item) -> bool:
        """Hand ``item`` to ``queue`` (an ``asyncio.Queue`` of this loop); False once the loop is closed
        (an item that joined a callback the closing loop never runs is lost with it: its pump stops at
        its next item)."""
        if self.loop.is_closed():
            return False
        with self.lock:
            self.waiting.append((queue, item))
            if len(self.waiting) > 1:  # a callback is on its way and takes this item too
                return True
        try:
            self.loop.call_soon_threadsafe(self._deliver)
            return True
        except RuntimeError:  # the event loop closed meanwhile (the server stopped)
            with self.lock:
                self.waiting.clear()
            return False

    def _deliver(self) -> None:
        with self.lock:
            waiting, self.waiting = self.waiting, []
        for queue, item in waiting:
            queue.put_nowait(item)  # unbounded queues: never QueueFull, so no item stops the others


class _Pump:
    """Runs a runner's stream in a thread of its own and hands each item to the event loop as it
    comes (with the other streams' items that come meanwhile: ``_Deliveries``): the generation never
    waits for the network (a batched step waits for no stream's
    client; a slow reader holds at most ``max_tokens`` items here). The thread closes the stream
    and gives its runner back when the stream ends or ``stop`` is asked for (after the current
    token), so a stream is never closed while a thread runs it."""

    def __init__(self, stream, done, deliveries: _Deliveries):
        import asyncio

        self.items, self.stopped, self.deliveries = asyncio.Queue(), threading.Event(), deliveries
        try:
            threading.Thread(target=self._run, args=(stream, done), name="llm-tflite-stream", daemon=True).start()
        except BaseException:
            try:
                stream.close()
            finally:
                done()
            raise

    def _run(self, stream, done) -> None:
        try:
            while not self.stopped.is_set():
                try:
                    item = next(stream, _END)
                except Exception as e:  # noqa: BLE001 - raised again in the response
                    item = e
                except BaseException:  # the thread is being torn down: the response must still end
                    self._put(RuntimeFailure("the generation was interrupted"))
                    raise
                if not self._put(item) or item is _END or isinstance(item, Exception):
                    return
        finally:
            try:
                stream.close()
            finally:
                done()

    def _put(self, item) -> bool:
        return self.deliveries.put(self.items, item)

    async def next(self):
        """The stream's next item, ``_END`` after the last; an exception it raised is raised here."""
        item = await self.items.get()
        if isinstance(item, BaseException):
            raise item
        return item

    def stop(self) -> None:
        self.stopped.set()


async def _event_stream(request, make_stream, render):
    """Server-sent events from a runner's stream (``TextStream`` or ``AutocompleteStream``): ``render``
    maps each item, and the stream's result (``None``: the client left) at the end, to a list of events.

    The runner is borrowed and the stream made before the response starts, so a busy server (503)
    and a request the runner refuses (4xx: bad messages, a context error, an invalid schema) answer
    with their status, as OpenAI's API does; only failures mid-stream become an error event. The
    stream runs in a ``_Pump``; a client that leaves stops the generation; the runner goes back to
    the pool however it ends. A client that leaves is noticed by the response itself, which stops
    the pump: Starlette listens for the disconnect (uvicorn speaks ASGI 2.3), and a server on ASGI
    2.4 or later raises on the next write. Asking ``request.is_disconnected()`` after every token
    cost the event loop a cancel scope a token."""
    from starlette.concurrency import run_in_threadpool
    from starlette.responses import StreamingResponse

    state = _state(request)
    runner = await _borrow(state)
    try:
        stream = await run_in_threadpool(make_stream, runner)
    except BaseException:
        state.pool.give_back(runner)
        raise
    pump = _Pump(stream, lambda: state.pool.give_back(runner), _Deliveries.of(state))

    async def events():
        try:
            while True:
                item = await pump.next()
                if item is _END:
                    state.metrics.count_tokens(stream.result)
                    for event in render(None, stream.result):
                        yield _sse(event)
                    return
                for event in render(item, None):
                    yield _sse(event)
        except LLMTFLiteError as e:
            yield _sse({"error": {"type": type(e).__name__, "message": str(e)}})
        except Exception as e:  # noqa: BLE001 - headers are sent: end the stream with an event, not a cut
            from llm_tflite.console import logger

            logger.exception("a stream failed: %s", e)
            yield _sse({"error": {"type": "internal_error", "message": "the generation failed; see the server log"}})

    class Events(StreamingResponse):
        async def __call__(self, scope, receive, send):
            try:
                await super().__call__(scope, receive, send)
            finally:  # also when the response is cancelled before its first event
                pump.stop()

    return Events(events(), media_type="text/event-stream")


def _sampler_args(body: dict, limits: Limits) -> dict:
    """``max_new_tokens``, ``sampler``, ``seed`` and every sampler setting the runner takes (``sampling.SETTINGS``)."""
    from llm_tflite.runtime import sampling

    args = {
        "max_new_tokens": _field(body, "max_new_tokens", int, None, low=1, high=limits.max_tokens),
        "sampler": _field(body, "sampler", str, "top_k"),
        "seed": _field(body, "seed", int, None, low=0, high=2**63 - 1),
    }
    for name, kind in sampling.SETTINGS.items():
        args[name] = _field(body, name, kind, None, low=1, high=100_000) if kind is int else _field(body, name, kind)
    width = args["num_beams"] if args["sampler"] == "beam" else args["top_k"] if args["sampler"] == "contrastive" else None
    if width is not None and width > limits.max_search_width:
        raise RequestError(400, "invalid_request", f"a search keeps at most {limits.max_search_width} candidates "
                           f"per step here (num_beams / top_k), got {width}")
    return args


# -- routes -------------------------------------------------------------------------
async def index(request):
    from starlette.responses import FileResponse

    return FileResponse(os.path.join(STATIC, "index.html"), media_type="text/html")


async def health(request):
    from starlette.responses import JSONResponse

    pool = _state(request).pool
    return JSONResponse({"status": "ok", "workers": len(pool.runners), "parallel": pool.parallel, "busy": pool.busy})


async def models(request):
    from starlette.responses import JSONResponse

    state = _state(request)
    meta = {k: v for k, v in state.pool.runners[0].metadata.items() if k not in ("tokenizer", "sha256")}
    return JSONResponse({"object": "list", "data": [
        {"id": state.model_id, "object": "model", "created": state.created, "owned_by": "llm-tflite",
         "metadata": meta}]})


def _suggestion_json(result) -> dict:
    return {"suggestion": result.suggestion, "words": result.words, "finish_reason": result.finish_reason,
            "prompt": result.prompt}


async def autocomplete(request):
    """The runner's autocomplete; streamed, its events become server-sent events."""
    from starlette.responses import JSONResponse

    state = _state(request)
    body = await _json_body(request, state.limits)
    text = _prompt(body, "text", state.limits)
    window = _field(body, "window_words", int, 20, low=1, high=1000)
    args = _sampler_args(body, state.limits)
    if args["max_new_tokens"] is None:
        args["max_new_tokens"] = min(32, state.limits.max_tokens)
    if body.get("stream"):
        def render(event, result):
            if event is None:  # the result was the last event
                return []
            if event.kind == "piece":
                return [{"text": event.value}]
            if event.kind == "retry":
                return [{"retry": event.value}]
            if event.value.reason:
                return [{"error": {"type": event.value.reason, "message": _REASONS[event.value.reason]}}]
            return [_suggestion_json(event.value)]

        return await _event_stream(request, lambda runner: runner.autocomplete_stream(text, window, **args), render)
    result = await _run(state, lambda runner: runner.autocomplete(text, window, **args))
    if result.reason:
        return _error(422, result.reason, _REASONS[result.reason])
    return JSONResponse(_suggestion_json(result))


def _completion_args(body: dict, limits: Limits, default_max_tokens=16) -> tuple[str | None, int, str, dict]:
    """``(prompt, max_tokens, sampler, runner keywords)`` of an OpenAI completions request (no prompt
    for a chat request)."""
    prompt = _prompt(body, "prompt", limits) if "messages" not in body else None
    if _field(body, "n", int, 1) != 1:
        raise RequestError(400, "invalid_request", "only n=1 is supported")
    max_tokens = _field(body, "max_completion_tokens", int, None, low=1, high=limits.max_tokens)
    if max_tokens is None:
        max_tokens = _field(body, "max_tokens", int, default_max_tokens, low=1, high=limits.max_tokens)
    temperature = _field(body, "temperature", float, 1.0, low=0.0, high=2.0)
    top_p = _field(body, "top_p", float, 1.0, low=0.0, high=1.0)
    seed = _field(body, "seed", int, None, low=0, high=2**63 - 1)
    stop = body.get("stop")
    if stop is not None and not (isinstance(stop, str) or (isinstance(stop, list) and len(stop) <= 4
                                                            and all(isinstance(s, str) for s in stop))):
        raise RequestError(400, "invalid_request", "'stop' must be a string or a list of up to 4 strings")
    kwargs = dict(seed=seed, stop=stop)
    if prompt is not None:
        kwargs["context_overflow"] = "error"
    if temperature == 0:
        sampler = "greedy"
    else:
        sampler = "random"
        kwargs.update(temperature=temperature, top_p=top_p if top_p < 1 else None)
    return prompt, max_tokens, sampler, kwargs


async def completions(request):
    """OpenAI's completions API."""
    from starlette.responses import JSONResponse

    state = _state(request)
    body = await _json_body(request, state.limits)
    prompt, max_tokens, sampler, kwargs = _completion_args(body, state.limits)
    completion_id = f"cmpl-{uuid.uuid4().hex[:24]}"

    def chunk(text, finish_reason=None):
        return {"id": completion_id, "object": "text_completion", "created": int(time.time()),
                "model": state.model_id,
                "choices": [{"text": text, "index": 0, "logprobs": None, "finish_reason": finish_reason}]}

    if body.get("stream"):
        def render(piece, result):
            if piece is not None:
                return [chunk(piece)]
            return [] if result is None else [chunk("", _OPENAI_FINISH[result.finish_reason]), "[DONE]"]

        return await _event_stream(request, lambda runner: runner.stream(prompt, max_tokens, sampler, **kwargs),
                                   render)
    result = await _run(state, lambda runner: runner.complete(prompt, max_tokens, sampler, **kwargs))
    state.metrics.count_tokens(result)
    response = chunk(result.text, _OPENAI_FINISH[result.finish_reason])
    response["usage"] = {"prompt_tokens": result.prompt_tokens, "completion_tokens": result.completion_tokens,
                         "total_tokens": result.prompt_tokens + result.completion_tokens}
    return JSONResponse(response)


def _messages(body: dict, limits: Limits) -> list:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise RequestError(400, "invalid_request", "'messages' must be a non-empty list of {role, content} objects")
    size = sum(len(m.get("content") or "") if isinstance(m, dict) and isinstance(m.get("content"), str) else 0
               for m in messages)
    if size > limits.max_prompt_chars:
        raise RequestError(400, "too_large", f"the messages hold {size} characters; at most {limits.max_prompt_chars}")
    return messages


def _response_format(body: dict):
    """The runner's ``json_schema`` for OpenAI's ``response_format`` (None: plain text)."""
    value = body.get("response_format")
    if value is None:
        return None
    kind = value.get("type") if isinstance(value, dict) else None
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "object"}
    if kind == "json_schema":
        spec = value.get("json_schema")
        if not isinstance(spec, dict) or not isinstance(spec.get("schema"), dict):
            raise RequestError(400, "invalid_request", "response_format json_schema needs {'json_schema': {'name', 'schema'}}")
        return spec["schema"]
    raise RequestError(400, "invalid_request", "response_format type must be text, json_object or json_schema")


def _usage(result) -> dict:
    return {"prompt_tokens": result.prompt_tokens, "completion_tokens": result.completion_tokens,
            "total_tokens": result.prompt_tokens + result.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": result.cached_tokens}}


def _chat_cache(runner):
    """The runner's cache of recent conversations (``llm_tflite.runtime.chat.PrefixCache``)."""
    return runner.__dict__.get("serve_chat_cache")


async def chat_completions(request):
    """OpenAI's chat completions API, on the file's chat template."""
    from starlette.responses import JSONResponse

    state = _state(request)
    body = await _json_body(request, state.limits)
    messages = _messages(body, state.limits)
    _, max_tokens, sampler, kwargs = _completion_args(body, state.limits, default_max_tokens=None)
    kwargs["json_schema"] = _response_format(body)
    completion_id = f"chatcmpl-{uuid.uuid4().hex[:24]}"

    def chunk(delta, finish_reason=None, usage=None):
        out = {"id": completion_id, "object": "chat.completion.chunk", "created": int(time.time()),
               "model": state.model_id, "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}]}
        if usage is not None:
            out["choices"], out["usage"] = [], usage
        return out

    def run(runner, stream):
        call = runner.chat_stream if stream else runner.chat
        # unset: up to --max-tokens, leaving at least half the context for the conversation
        limit = max_tokens or max(1, min(state.limits.max_tokens, runner.context_length // 2))
        return call(messages, limit, sampler, cache=_chat_cache(runner), **kwargs)

    if body.get("stream"):
        options = body.get("stream_options")
        include_usage = isinstance(options, dict) and options.get("include_usage") is True
        started = []

        def render(piece, result):
            events = [] if started else [chunk({"role": "assistant", "content": ""})]
            started.append(True)
            if piece is not None:
                return events + [chunk({"content": piece})]
            if result is None:
                return []
            events.append(chunk({}, _OPENAI_FINISH[result.finish_reason]))
            if include_usage:
                events.append(chunk({}, usage=_usage(result)))
            return events + ["[DONE]"]

        return await _event_stream(request, lambda runner: run(runner, True), render)
    result = await _run(state, lambda runner: run(runner, False))
    state.metrics.count_tokens(result)
    return JSONResponse({
        "id": completion_id, "object": "chat.completion", "created": int(time.time()), "model": state.model_id,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": result.text},
                     "finish_reason": _OPENAI_FINISH[result.finish_reason], "logprobs": None}],
        "usage": _usage(result)})


def _handle(endpoint):
    """``endpoint`` with our errors turned into JSON error responses."""
    async def wrapped(request):
        try:
            return await endpoint(request)
        except RequestError as e:
            return _error(e.status, e.kind, e.message)
        except ContextLengthError as e:
            return _error(400, "context", str(e))
        except LLMTFLiteError as e:
            return _error(400, type(e).__name__, str(e))

    return wrapped


async def metrics(request):
    from starlette.responses import Response

    body, content_type = _state(request).metrics.text()
    return Response(body, media_type=content_type)


ROUTES = (("/", index, ["GET"]), ("/health", health, ["GET"]), ("/v1/models", models, ["GET"]),
          ("/metrics", metrics, ["GET"]),
          ("/v1/autocomplete", autocomplete, ["POST"]), ("/v1/completions", completions, ["POST"]),
          ("/v1/chat/completions", chat_completions, ["POST"]))


def create_app(path, *, workers: int = 1, limits: Limits | None = None, runner_factory=None, api_keys=(),
               cors_origins=(), parallel: int | None = None, lanes: int | str = "auto"):
    """The Starlette app serving ``path`` with ``workers`` runners, each serving ``parallel``
    requests at once (their decode steps batched: ``InterpreterRunner(batching=True)``; default: the
    largest batch the file decodes in one call, or 1 for a file without ``decode_batch`` signatures).

    ``api_keys``: keys one of which every request but ``/`` and ``/health`` must carry
    (``Authorization: Bearer KEY``); none: no keys asked. ``cors_origins``: origins whose pages may
    call the API (none: only same-origin pages, the browser's default). ``lanes``: schedulers each
    runner decodes its requests with, each on a compiled model of its own (``InterpreterRunner(lanes=...)``;
    ``"auto"``: 2 where they pay).

    Example:
        >>> app = create_app("build/model.tflite", workers=2)  # doctest: +SKIP
        >>> import uvicorn; uvicorn.run(app, host="127.0.0.1", port=8000)  # doctest: +SKIP
    """
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.middleware.cors import CORSMiddleware
    from starlette.routing import Route

    from llm_tflite.serve.gate import Gate, Metrics

    from llm_tflite.runtime.runner import InterpreterRunner

    limits = limits or Limits()
    if parallel is not None and not (isinstance(parallel, int) and parallel >= 1):
        raise InvalidArgumentError(f"parallel must be a positive integer (or None: what the file supports), got "
                                   f"{parallel!r}")
    # the cores shared between the workers: more threads than cores would only make them wait for each other
    threads = max(1, (os.cpu_count() or 1) // workers)
    batching = "auto" if parallel is None else parallel > 1
    if lanes == "auto" and parallel is not None:  # slots too few to reach a second lane
        from llm_tflite.runtime.batching import LANE_SLOTS

        lanes = "auto" if parallel > LANE_SLOTS else 1
    make = runner_factory or (lambda: InterpreterRunner(path, num_threads=threads, batching=batching, lanes=lanes))
    pool = RunnerPool(make, workers, limits.wait_seconds, limits.max_waiting, parallel)
    from llm_tflite.runtime.chat import PrefixCache

    for runner in pool.runners:  # each runner's recent conversations, reused by prefix (chat_completions)
        runner.serve_chat_cache = PrefixCache(limits.chat_cache)
    state = AppState(pool, limits, os.path.splitext(os.path.basename(os.fspath(path)))[0], int(time.time()),
                     Metrics(pool), tuple(api_keys))
    middleware = [Middleware(Gate, state=state, routes=[route for route, _, _ in ROUTES])]
    if cors_origins:  # the gate answers first; preflights (OPTIONS) pass it without a key
        middleware.append(Middleware(CORSMiddleware, allow_origins=list(cors_origins), allow_methods=["GET", "POST"],
                                     allow_headers=["Authorization", "Content-Type", "X-Request-ID"],
                                     expose_headers=["X-Request-ID"]))
    app = Starlette(routes=[Route(route, _handle(endpoint), methods=methods) for route, endpoint, methods in ROUTES],
                    middleware=middleware)
    app.state.pool = pool
    app.state.llm = state
    return app


def graceful_server(app, **config):
    """A ``uvicorn.Server`` for ``app`` (``config``: ``uvicorn.Config``'s) that, asked to stop (SIGTERM,
    Ctrl+C), refuses new requests with 503 at once and lets running ones finish within
    ``timeout_graceful_shutdown`` seconds before it exits."""
    import signal

    import uvicorn

    from llm_tflite.console import logger

    class GracefulServer(uvicorn.Server):
        def handle_exit(self, sig, frame):
            state = app.state.llm
            if not state.draining:
                state.draining = True
                logger.info("stopping: running requests have %s s to finish, new ones get 503",
                            config.get("timeout_graceful_shutdown"))
            super().handle_exit(sig, frame)
            if sig == signal.SIGTERM:  # a stop asked for and carried out: exit 0, not re-raise SIGTERM (uvicorn's way)
                getattr(self, "_captured_signals", []).clear()

    return GracefulServer(uvicorn.Config(app, **config))


_REASONS = {
    "bad_language": "the text holds a word the filter rejects; no suggestion was generated",
    "no_suggestion": "no suggestion: every try was filtered, or nothing new came",
    "context": "the text does not fit the model's context",
}
#: Our finish reasons in OpenAI's words.
_OPENAI_FINISH = {"stop": "stop", "length": "length", "context": "length", "filtered": "content_filter"}
