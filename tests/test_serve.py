"""llm-tflite serve: the HTTP API (plain HTTP, as any client would), limits, concurrency."""

import http.client
import json
import threading
import time
import urllib.error
import urllib.request

import pytest

from llm_tflite import InterpreterRunner
from llm_tflite.testing import ServerThread as Server


def post(url, body, timeout=120):
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def events(text: str) -> list:
    return [line[len("data: "):] for line in text.split("\n\n") if line.startswith("data: ")]


@pytest.fixture(scope="module")
def server(tiny_tflite):
    from llm_tflite.serve.app import Limits, create_app

    served = Server(create_app(tiny_tflite, workers=2, limits=Limits(max_body_bytes=4096, max_prompt_chars=500,
                                                                        max_tokens=64, wait_seconds=5)))
    yield served
    served.stop()


def test_health_and_models(server, tiny_tflite):
    with urllib.request.urlopen(server.url + "/health") as r:
        assert json.load(r) == {"status": "ok", "workers": 2, "parallel": 1, "busy": 0}
    with urllib.request.urlopen(server.url + "/v1/models") as r:
        model = json.load(r)["data"][0]
    assert model["id"] == "tiny" and model["metadata"]["export_mode"] == "prefill_decode"
    assert "tokenizer" not in model["metadata"]
    with urllib.request.urlopen(server.url + "/") as r:
        page = r.read().decode()
    assert "Generate" in page and "<script" in page and "http" not in page.split("<script")[1].split("fetch(")[0]


def test_completions_equal_the_runner_for_the_same_seed(server, tiny_tflite):
    runner = InterpreterRunner(tiny_tflite)
    body = {"model": "tiny", "prompt": "ROMEO:", "max_tokens": 12, "temperature": 0.8, "top_p": 0.9, "seed": 7,
            "stop": ["\n\n"]}
    status, text = post(server.url + "/v1/completions", body)
    assert status == 200, text
    reply = json.loads(text)
    expected = runner.complete("ROMEO:", 12, "random", seed=7, temperature=0.8, top_p=0.9, stop=["\n\n"])
    choice = reply["choices"][0]
    assert reply["object"] == "text_completion" and choice["text"] == expected.text
    assert choice["finish_reason"] == {"context": "length"}.get(expected.finish_reason, expected.finish_reason)
    assert reply["usage"] == {"prompt_tokens": expected.prompt_tokens, "completion_tokens": expected.completion_tokens,
                              "total_tokens": expected.prompt_tokens + expected.completion_tokens}
    status, streamed = post(server.url + "/v1/completions", {**body, "stream": True})
    chunks = events(streamed)
    assert chunks[-1] == "[DONE]"
    parts = [json.loads(c)["choices"][0] for c in chunks[:-1]]
    assert "".join(p["text"] for p in parts) == expected.text and parts[-1]["finish_reason"] == choice["finish_reason"]
    greedy = json.loads(post(server.url + "/v1/completions", {"prompt": "KING:", "max_tokens": 9, "temperature": 0})[1])
    assert greedy["choices"][0]["text"] == runner.generate("KING:", 9)


def test_autocomplete_api(server, tiny_tflite):
    runner = InterpreterRunner(tiny_tflite)
    text = "one two three four five six"
    status, reply = post(server.url + "/v1/autocomplete", {"text": text, "window_words": 3, "seed": 3,
                                                           "max_new_tokens": 10})
    assert status == 200, reply
    expected = runner.autocomplete(text, 3, max_new_tokens=10, seed=3)
    assert json.loads(reply) == {"suggestion": expected.suggestion, "words": expected.words,
                                 "finish_reason": expected.finish_reason, "prompt": "four five six"}
    status, reply = post(server.url + "/v1/autocomplete", {"text": "shut up, bastard"})
    assert status == 422 and json.loads(reply)["error"]["type"] == "bad_language"
    status, streamed = post(server.url + "/v1/autocomplete", {"text": text, "window_words": 3, "seed": 3,
                                                              "max_new_tokens": 10, "stream": True})
    final = json.loads(events(streamed)[-1])
    assert final["suggestion"] == expected.suggestion and final["prompt"] == "four five six"
    pieces = [json.loads(e)["text"] for e in events(streamed)[:-1]]
    assert "".join(pieces) == expected.suggestion
    status, streamed = post(server.url + "/v1/autocomplete", {"text": "shut up, bastard", "stream": True})
    assert json.loads(events(streamed)[-1])["error"]["type"] == "bad_language"


@pytest.mark.parametrize("body, status, kind", [
    (b"{not json", 400, "invalid_json"),
    (b"[1, 2]", 400, "invalid_request"),
    ({"prompt": 5}, 400, "invalid_request"),
    ({"prompt": "x" * 600}, 413, "too_large"),
    ({"prompt": "hi", "max_tokens": 65}, 400, "invalid_request"),
    ({"prompt": "hi", "max_tokens": 0}, 400, "invalid_request"),
    ({"prompt": "hi", "temperature": "hot"}, 400, "invalid_request"),
    ({"prompt": "hi", "stop": [1]}, 400, "invalid_request"),
    ({"prompt": "hi", "n": 2}, 400, "invalid_request"),
    (json.dumps({"prompt": "a" * 5000}).encode(), 413, "too_large"),
    ({"prompt": "word " * 90, "max_tokens": 64}, 400, "context"),
])
def test_bad_requests_get_typed_errors(server, body, status, kind):
    got, text = post(server.url + "/v1/completions", body)
    assert got == status and json.loads(text)["error"]["type"] == kind


def _slow_factory(path, delay, calls):
    def make():
        runner = InterpreterRunner(path)
        call = runner.engine.call

        def slow(name, inputs):
            calls.append(name)
            time.sleep(delay)
            return call(name, inputs)

        runner.engine.call = slow
        return runner

    return make


def test_busy_server_answers_503_instead_of_queueing_forever(tiny_tflite):
    from llm_tflite.serve.app import Limits, create_app

    calls = []
    app = create_app(tiny_tflite, workers=1, runner_factory=_slow_factory(tiny_tflite, 0.05, calls),
                     limits=Limits(wait_seconds=0.3, max_waiting=1))
    served = Server(app)
    try:
        results = []

        def request():
            results.append(post(served.url + "/v1/completions", {"prompt": "ROMEO:", "max_tokens": 40,
                                                                 "temperature": 0})[0])

        threads = [threading.Thread(target=request) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert results.count(200) >= 1 and results.count(503) >= 2 and set(results) <= {200, 503}
    finally:
        served.stop()


def test_a_client_that_leaves_stops_its_generation(tiny_tflite):
    from llm_tflite.serve.app import create_app

    calls = []
    app = create_app(tiny_tflite, workers=1, runner_factory=_slow_factory(tiny_tflite, 0.05, calls))
    served = Server(app)
    try:
        connection = http.client.HTTPConnection("127.0.0.1", served.port, timeout=30)
        connection.request("POST", "/v1/completions", json.dumps({"prompt": "ROMEO:", "max_tokens": 100,
                                                                  "temperature": 0, "stream": True}),
                           {"Content-Type": "application/json"})
        response = connection.getresponse()
        assert response.status == 200 and response.read1(64)
        connection.close()  # leave after the first piece
        time.sleep(2.0)
        after_leaving = len(calls)
        assert after_leaving < 60, "the generation went on after the client left"
        time.sleep(1.0)
        assert len(calls) == after_leaving and app.state.pool.busy == 0
    finally:
        served.stop()


def test_serve_command_refuses_bad_options_and_warns_when_not_on_loopback(tiny_tflite):
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "llm_tflite", "serve", str(tiny_tflite), "--workers", "0"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 1 and "--workers must be at least 1" in out.stderr
    out = subprocess.run([sys.executable, "-m", "llm_tflite", "serve", str(tiny_tflite), "--parallel", "4"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 1 and "no decode_batch signatures" in out.stderr and "--batch-sizes" in out.stderr
    out = subprocess.run([sys.executable, "-m", "llm_tflite", "serve", str(tiny_tflite), "--lanes", "two"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "argument --lanes: 'auto' or a number, not 'two'" in out.stderr
    out = subprocess.run([sys.executable, "-m", "llm_tflite", "serve", str(tiny_tflite), "--parallel", "1",
                          "--lanes", "2"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 1 and "needs batching" in out.stderr and "--parallel 2 or more" in out.stderr
    from llm_tflite.cli.serve import _loopback

    assert _loopback("127.0.0.1") and _loopback("localhost") and _loopback("::1") and not _loopback("0.0.0.0")


class _RejectsEveryOutput:
    """A filter that passes the prompt and rejects any generated text: every try is filtered."""

    def __init__(self, prompt):
        self.prompt = prompt

    def find(self, text):
        return None if text == self.prompt or not text.strip() else text.split()[0]


@pytest.mark.parametrize("sampler, tries", [("greedy", 1), ("top_k", 3)])  # 3: runner.FILTER_TRIES
def test_server_stream_and_runner_share_the_retry_rule(tiny_tflite, monkeypatch, sampler, tries):
    """One retry rule: a deterministic sampler gets one try (a retry would repeat its text), a random one
    FILTER_TRIES; the server's stream and runner.autocomplete make the same number of generations."""
    from llm_tflite.runtime import filters
    from llm_tflite.serve.app import create_app

    text = "one two three"
    monkeypatch.setattr(filters, "resolve_filter", lambda value: _RejectsEveryOutput(text))
    generations = []

    def counting_runner():
        runner = InterpreterRunner(tiny_tflite)
        tokens = runner.engine.tokens
        runner.engine.tokens = lambda *args: generations.append(1) or tokens(*args)
        return runner

    served = Server(create_app(tiny_tflite, runner_factory=counting_runner))
    try:
        status, streamed = post(served.url + "/v1/autocomplete", {"text": text, "sampler": sampler, "seed": 5,
                                                                  "max_new_tokens": 6, "stream": True})
        server_generations = len(generations)
        runner = counting_runner()
        generations.clear()
        result = runner.autocomplete(text, sampler=sampler, seed=5, max_new_tokens=6)
    finally:
        served.stop()
    assert status == 200
    sent = [json.loads(e) for e in events(streamed)]
    assert sent[-1]["error"]["type"] == "no_suggestion" == result.reason
    assert [e["retry"] for e in sent if "retry" in e] == list(range(1, tries + 1))  # each filtered try dropped
    assert server_generations == len(generations) == result.attempts == tries


KEY = "test-key-0123456789abcdef"


def request(url, body=None, headers=None, method=None, timeout=120):
    """``(status, headers, text)`` of one request."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as response:
            return response.status, dict(response.headers), response.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read().decode()


def test_api_keys_cors_request_ids_and_metrics(tiny_tflite):
    from prometheus_client.parser import text_string_to_metric_families

    from llm_tflite.serve.app import create_app

    served = Server(create_app(tiny_tflite, api_keys=[KEY, "second-key-0123456789"], cors_origins=["http://app.test"]))
    try:
        body = {"prompt": "ROMEO:", "max_tokens": 5, "temperature": 0}
        for headers in ({}, {"Authorization": "Bearer wrong-key-0123456789abc"}, {"Authorization": KEY}):
            status, _, text = request(served.url + "/v1/completions", body, headers)
            assert status == 401 and json.loads(text) == {"error": {"type": "unauthorized",
                                                                     "message": "a valid API key is required"}}
        status, headers, text = request(served.url + "/v1/completions", body, {"Authorization": f"Bearer {KEY}",
                                                                              "X-Request-ID": "client-id-1"})
        assert status == 200 and headers["x-request-id"] == "client-id-1"
        assert json.loads(text)["choices"][0]["text"] == InterpreterRunner(tiny_tflite).generate("ROMEO:", 5, "greedy")
        assert request(served.url + "/health")[0] == 200 and request(served.url + "/")[0] == 200  # open routes
        status, headers, _ = request(served.url + "/v1/models", headers={"Authorization": "Bearer second-key-0123456789"})
        assert status == 200 and len(headers["x-request-id"]) == 16  # made when the client sends none
        # CORS: the named origin may call the API from its pages, another may not
        preflight = {"Origin": "http://app.test", "Access-Control-Request-Method": "POST",
                     "Access-Control-Request-Headers": "authorization,content-type"}
        status, headers, _ = request(served.url + "/v1/completions", headers=preflight, method="OPTIONS")
        assert status == 200 and headers["access-control-allow-origin"] == "http://app.test"
        status, headers, _ = request(served.url + "/v1/completions", headers={**preflight, "Origin": "http://evil.test"},
                                     method="OPTIONS")
        assert "access-control-allow-origin" not in {k.lower() for k in headers}
        # metrics: the requests above by route and status, tokens, idle slots
        assert request(served.url + "/metrics")[0] == 401
        status, _, text = request(served.url + "/metrics", headers={"Authorization": f"Bearer {KEY}"})
        families = {f.name: f for f in text_string_to_metric_families(text)}
        answered = {(s.labels["route"], s.labels["status"]): s.value for s in families["llm_tflite_requests"].samples
                    if s.name == "llm_tflite_requests_total"}
        # 3 without a valid key; 2 answered: the completion and the allowed origin's preflight
        assert answered[("/v1/completions", "401")] == 3 and answered[("/v1/completions", "200")] == 2
        tokens = {s.labels["kind"]: s.value for s in families["llm_tflite_tokens"].samples if s.name.endswith("_total")}
        assert tokens["completion"] == 5 and tokens["prompt"] > 0
        assert families["llm_tflite_active_slots"].samples[0].value == 0
        assert families["llm_tflite_queue_depth"].samples[0].value == 0
        assert any(s.name == "llm_tflite_request_seconds_count" for s in families["llm_tflite_request_seconds"].samples)
    finally:
        served.stop()
    # without origins, no page of another origin may call the API
    served = Server(create_app(tiny_tflite))
    try:
        status, headers, _ = request(served.url + "/v1/completions", headers=preflight, method="OPTIONS")
        assert "access-control-allow-origin" not in {k.lower() for k in headers}
    finally:
        served.stop()


def test_requests_in_flight_per_key_are_limited(tiny_tflite):
    from llm_tflite.serve.app import Limits, create_app

    calls = []
    # the first stream must still run when the second request comes: greedy, which runs all 40 tokens
    # (sampled at temperature 1, an early end-of-text token let it finish first, once in CI)
    assert InterpreterRunner(tiny_tflite).complete("ROMEO:", 40).completion_tokens == 40
    served = Server(create_app(tiny_tflite, workers=2, runner_factory=_slow_factory(tiny_tflite, 0.05, calls),
                               api_keys=[KEY], limits=Limits(max_streams_per_key=1)))
    try:
        connection = http.client.HTTPConnection("127.0.0.1", served.port, timeout=60)
        connection.request("POST", "/v1/completions", json.dumps({"prompt": "ROMEO:", "max_tokens": 40, "stream": True,
                                                                  "temperature": 0}),
                           {"Content-Type": "application/json", "Authorization": f"Bearer {KEY}"})
        response = connection.getresponse()
        response.read1(64)  # the stream has started
        status, _, text = request(served.url + "/v1/completions", {"prompt": "hi", "max_tokens": 2},
                                  {"Authorization": f"Bearer {KEY}"})
        assert status == 429 and json.loads(text)["error"]["type"] == "too_many_requests"
        response.read()
        connection.close()
        assert request(served.url + "/v1/completions", {"prompt": "hi", "max_tokens": 2},
                       {"Authorization": f"Bearer {KEY}"})[0] == 200  # the slot came back
    finally:
        served.stop()


def test_shutdown_lets_running_streams_finish_and_refuses_new_requests(tiny_tflite):
    import signal

    from llm_tflite.serve.app import create_app

    calls = []
    served = Server(create_app(tiny_tflite, workers=2, runner_factory=_slow_factory(tiny_tflite, 0.05, calls)))
    connection = http.client.HTTPConnection("127.0.0.1", served.port, timeout=60)
    connection.request("POST", "/v1/completions", json.dumps({"prompt": "ROMEO:", "max_tokens": 30, "stream": True,
                                                              "temperature": 0}), {"Content-Type": "application/json"})
    response = connection.getresponse()
    first = response.read1(64)
    idle = http.client.HTTPConnection("127.0.0.1", served.port, timeout=30)  # a second, kept-alive connection
    idle.request("GET", "/health")
    assert idle.getresponse().read()
    served.server.handle_exit(signal.SIGTERM, None)  # what SIGTERM does
    try:
        idle.request("GET", "/health")
        refused = idle.getresponse().status
    except (ConnectionError, http.client.HTTPException):
        refused = "closed"
    assert refused in (503, "closed")
    rest = response.read()  # the running stream finishes
    chunks = events((first + rest).decode())
    assert chunks[-1] == "[DONE]" and json.loads(chunks[-2])["choices"][0]["finish_reason"] == "length"
    text = "".join(json.loads(c)["choices"][0]["text"] for c in chunks[:-1])
    assert text == InterpreterRunner(tiny_tflite).generate("ROMEO:", 30, "greedy")
    served.thread.join(30)
    assert not served.thread.is_alive()


def test_serve_command_stops_on_sigterm(tiny_tflite, tmp_path):
    import signal
    import subprocess
    import sys

    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    keys = tmp_path / "keys.txt"
    keys.write_text(f"# clients\n{KEY}\n")
    process = subprocess.Popen([sys.executable, "-m", "llm_tflite", "serve", str(tiny_tflite), "--port", str(port),
                                "--api-key-file", str(keys), "--grace-seconds", "5"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 60
        while True:
            try:
                if request(f"http://127.0.0.1:{port}/health", timeout=5)[0] == 200:
                    break
            except (urllib.error.URLError, ConnectionError):
                pass
            assert time.time() < deadline and process.poll() is None, process.stderr.read() if process.poll() else ""
            time.sleep(0.2)
        assert request(f"http://127.0.0.1:{port}/v1/models")[0] == 401
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0
        assert "1 API key(s)" in process.stderr.read()
    finally:
        if process.poll() is None:
            process.kill()


@pytest.fixture
def request_fixture(request):
    """``request.getfixturevalue`` (this module's ``request`` is its HTTP helper)."""
    return request.getfixturevalue


def _rss_anon_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("RssAnon:")) / 1024


@pytest.mark.parametrize("batched", [False, True], ids=["workers", "batched"])
def test_load_and_faults_leave_no_slot_busy_and_answers_right(request_fixture, batched):
    """16 clients on loopback: good requests (checked against the unbatched runner for their seed),
    streams the client leaves midway, slow readers, malformed and oversized bodies; on 2 runners,
    and on one runner decoding 4 requests at once (``--parallel 4``, continuous batching). No crash,
    every slot idle afterwards, memory flat from one round to the next."""
    import random

    from prometheus_client.parser import text_string_to_metric_families

    from llm_tflite.serve.app import Limits, create_app

    path = request_fixture("batched_file" if batched else "tiny_tflite")
    runner = InterpreterRunner(path)
    app = create_app(path, workers=1 if batched else 2, limits=Limits(max_body_bytes=4096, wait_seconds=60,
                                                                       max_waiting=32))
    assert app.state.pool.slots == (4 if batched else 2)  # batched: the file's largest batch, by default
    served = Server(app)
    failures, completed = [], []

    def client(number: int, rounds: int):
        rng = random.Random(number)
        for i in range(rounds):
            kind = rng.choice(["good", "good", "leave", "slow", "malformed", "oversized"])
            seed = number * 100 + i
            try:
                if kind == "good":
                    status, _, text = request(served.url + "/v1/completions", {"prompt": "ROMEO:", "max_tokens": 12,
                                                                             "temperature": 0.8, "seed": seed})
                    answer = json.loads(text)["choices"][0]["text"] if status == 200 else None
                    expected = runner.complete("ROMEO:", 12, "random", temperature=0.8, seed=seed).text
                    (completed if answer == expected else failures).append((kind, status, answer, expected))
                elif kind in ("leave", "slow"):
                    connection = http.client.HTTPConnection("127.0.0.1", served.port, timeout=60)
                    connection.request("POST", "/v1/completions", json.dumps(
                        {"prompt": "ROMEO:", "max_tokens": 40, "stream": True, "seed": seed}),
                        {"Content-Type": "application/json"})
                    response = connection.getresponse()
                    if kind == "leave":
                        response.read1(32)
                        connection.close()  # gone mid-stream
                    else:
                        while chunk := response.read(16):
                            time.sleep(0.002)
                        connection.close()
                        completed.append(kind)
                elif kind == "malformed":
                    status = request(served.url + "/v1/completions", method="POST")[0]
                    (completed if status == 400 else failures).append((kind, status))
                else:
                    status, _, _ = request(served.url + "/v1/completions", {"prompt": "x" * 10_000})
                    (completed if status == 413 else failures).append((kind, status))
            except Exception as e:  # noqa: BLE001 -- any client-side failure is a failure of the test
                failures.append((kind, repr(e)))

    try:
        rss = []
        for round_number in range(2):
            threads = [threading.Thread(target=client, args=(n + 100 * round_number, 4)) for n in range(16)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(300)
            rss.append(_rss_anon_mb())
        assert failures == [] and len(completed) > 60
        deadline = time.time() + 30
        while True:  # a stream the client left ends after its current token
            families = {f.name: f for f in text_string_to_metric_families(request(served.url + "/metrics")[2])}
            idle = (families["llm_tflite_active_slots"].samples[0].value, families["llm_tflite_queue_depth"].samples[0].value)
            if idle == (0, 0) or time.time() > deadline:
                break
            time.sleep(0.2)
        assert idle == (0, 0)
        assert families["llm_tflite_slots"].samples[0].value == (4 if batched else 2)
        if batched:  # decode steps carried several requests
            engine = app.state.pool.runners[0].engine
            assert engine.rows > engine.steps > 0
            assert families["llm_tflite_batch_rows"].samples[0].value == engine.rows
        assert request(served.url + "/health")[0] == 200
        assert rss[1] - rss[0] < 64, rss  # MB of anonymous memory the second round added
    finally:
        served.stop()


def test_a_stream_the_runner_refuses_gets_its_status_not_an_event(server):
    """As OpenAI's API: a streamed request that cannot start answers 4xx, not 200 with an error event."""
    status, text = post(server.url + "/v1/completions", {"prompt": "word " * 90, "max_tokens": 64, "stream": True})
    assert status == 400 and json.loads(text)["error"]["type"] == "context"
    status, text = post(server.url + "/v1/completions", {"prompt": "hi", "max_tokens": 4, "stream": True,
                                                         "temperature": 0})
    assert status == 200 and events(text)[-1] == "[DONE]"


def test_stream_items_reach_the_event_loop_in_order_with_one_wake_up_for_those_waiting_together():
    """Pumps' threads hand items to the event loop through ``_Deliveries``: items that arrive while the
    loop is busy go with one callback (one write to its self-pipe), each stream's in its order; a
    closed loop takes nothing."""
    import asyncio

    from llm_tflite.serve.app import AppState, _Deliveries

    async def scenario():
        loop = asyncio.get_running_loop()
        state = AppState(pool=None, limits=None, model_id="m", created=0)
        deliveries = _Deliveries.of(state)
        assert _Deliveries.of(state) is deliveries
        queues = [asyncio.Queue() for _ in range(4)]
        wakeups = []
        schedule = loop.call_soon_threadsafe
        loop.call_soon_threadsafe = lambda *args: (wakeups.append(args), schedule(*args))[1]
        try:
            def producer(number):  # the loop is blocked in join() meanwhile: everything waits for one callback
                for i in range(50):
                    assert deliveries.put(queues[number], (number, i))

            threads = [threading.Thread(target=producer, args=(n,)) for n in range(4)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            got = [[await asyncio.wait_for(q.get(), 10) for _ in range(50)] for q in queues]
            assert got == [[(n, i) for i in range(50)] for n in range(4)]
            assert len(wakeups) == 1
            assert deliveries.put(queues[0], "next") and await asyncio.wait_for(queues[0].get(), 10) == "next"
            assert len(wakeups) == 2
        finally:
            loop.call_soon_threadsafe = schedule
        return deliveries, queues[0]

    deliveries, queue = asyncio.run(scenario())
    assert deliveries.put(queue, "late") is False  # the loop is closed: the pump stops


def test_a_servers_runners_take_lanes_where_their_slots_reach_a_second_lane(batched_file, monkeypatch):
    """``--lanes auto`` (the default) asks the engine's rule, unless the slots are too few to reach a second
    lane; a number is taken as given."""
    from llm_tflite.serve.app import create_app

    if not hasattr(InterpreterRunner(batched_file, weight_cache="memory").engine.model, "run_bound"):
        pytest.skip("lanes need LiteRT's C API (here: ai_edge_litert's wrapper)")

    def lanes(**options):
        engine = create_app(batched_file, **options).state.pool.runners[0].engine
        engine.close()
        return engine.lanes

    monkeypatch.setattr("llm_tflite.runtime.batching.LANE_SLOTS", 3)  # this file's runners take 4 slots
    monkeypatch.setattr("os.cpu_count", lambda: 2)  # a runner of 2 threads, on any machine
    assert lanes() == 2 and lanes(parallel=4) == 2 and lanes(parallel=3) == 1 and lanes(parallel=3, lanes=2) == 2
