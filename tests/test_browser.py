"""The autocomplete app in a real browser: Playwright driving Debian's Chromium (.ci/run installs it).

Screenshots of the main states go to build/screenshots/ (one is docs/images/autocomplete.png).
"""

import json
import pathlib
import shutil

import pytest

from llm_tflite import InterpreterRunner

ROOT = pathlib.Path(__file__).resolve().parents[1]
SHOTS = ROOT / "build" / "screenshots"
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"]

pytestmark = pytest.mark.slow


def _chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.fail("browser tests need Debian's Chromium: apt-get install chromium (.ci/run installs it)")
    return path


@pytest.fixture(scope="module")
def app_server(tmp_path_factory):
    from llm_tflite import Converter
    from llm_tflite.serve.app import create_app
    from llm_tflite.testing import ServerThread as Server

    path = tmp_path_factory.mktemp("browser") / "shipped.tflite"
    Converter(quantize="dynamic_int8").convert("gpt2_tiny_shakespeare", str(path))
    calls = []

    def counting_runner():
        runner = InterpreterRunner(path)
        call = runner.engine.call
        runner.engine.call = lambda name, inputs: calls.append(name) or call(name, inputs)
        return runner

    served = Server(create_app(path, workers=1, runner_factory=counting_runner))
    served.calls = calls
    yield served
    served.stop()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=_chromium(), args=CHROMIUM_FLAGS, headless=True)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser, app_server):
    context = browser.new_context(viewport={"width": 900, "height": 700},
                                  permissions=["clipboard-read", "clipboard-write"])
    page = context.new_page()
    page.goto(app_server.url + "/")
    SHOTS.mkdir(parents=True, exist_ok=True)
    yield page
    context.close()


def _type(page, text):
    page.click("#editor")
    page.keyboard.type(text)


def _finished(page) -> int:
    """Requests the page has finished (``data-finished``, counted after a request's last event)."""
    return int(page.evaluate("Number(document.body.dataset.finished || 0)"))


def _wait_for_suggestion(page, finished_before: int) -> str:
    """The suggestion of the request started after ``finished_before`` requests had finished: waits on
    the page's own counter, which cannot be missed however fast the generation is."""
    page.wait_for_function(f"Number(document.body.dataset.finished || 0) > {finished_before}", timeout=60_000)
    assert not page.is_disabled("#accept"), page.inner_text("#message")
    return page.inner_text(".suggestion")


def test_type_slide_generate_accept_retry_copy_clear(page, app_server):
    requests = []
    page.on("request", lambda r: requests.append(json.loads(r.post_data)) if r.url.endswith("/v1/autocomplete") else None)
    _type(page, "ROMEO: But soft, what light through yonder window breaks?")
    page.locator("#window").fill("10")
    assert page.inner_text("#window-value") == "10"
    page.click("#generate")
    suggestion = _wait_for_suggestion(page, 0)
    assert suggestion.strip() and requests[-1]["window_words"] == 10 and requests[-1]["stream"] is True
    page.screenshot(path=str(SHOTS / "suggestion.png"))

    page.click("#accept")
    accepted = page.locator("mark.accepted")
    assert accepted.count() == 1 and accepted.inner_text() == suggestion
    assert page.locator(".suggestion").count() == 0 and page.is_disabled("#accept")
    full_text = page.evaluate("document.getElementById('editor').textContent")
    assert full_text == "ROMEO: But soft, what light through yonder window breaks?" + suggestion

    before = _finished(page)
    page.keyboard.press("Control+Enter")  # generate again from the keyboard
    first = _wait_for_suggestion(page, before)
    page.click("#retry")
    second = _wait_for_suggestion(page, before + 1)
    assert len(requests) == 3 and requests[2]["seed"] != requests[1]["seed"]
    assert first.strip() and second.strip()
    page.focus("#editor")
    page.keyboard.press("Tab")  # Tab in the text accepts
    assert page.locator("mark.accepted").count() == 2  # earlier accepted text stays highlighted
    page.screenshot(path=str(SHOTS / "accepted.png"))

    page.click("#copy")
    assert page.evaluate("navigator.clipboard.readText()") == page.evaluate(
        "document.getElementById('editor').textContent")
    assert "Copied" in page.inner_text("#message")
    page.click("#clear")
    assert page.evaluate("document.getElementById('editor').textContent") == ""


def test_bad_language_shows_a_message_and_makes_no_model_call(page, app_server):
    before = len(app_server.calls)
    _type(page, "You bastard, thou art")
    page.click("#generate")
    page.wait_for_function("document.getElementById('message').textContent.includes('Bad language')",
                           timeout=30_000)
    assert page.locator(".suggestion").count() == 0 and page.is_disabled("#accept")
    assert len(app_server.calls) == before
    page.screenshot(path=str(SHOTS / "bad_language.png"))


def test_phone_width_layout(browser, app_server):
    context = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True)
    page = context.new_page()
    page.goto(app_server.url + "/")
    _type(page, "JULIET: O Romeo, Romeo, wherefore art thou")
    page.click("#generate")
    _wait_for_suggestion(page, 0)
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    for button in ("#generate", "#accept", "#retry", "#clear", "#copy"):
        box = page.locator(button).bounding_box()
        assert box["x"] >= 0 and box["x"] + box["width"] <= 390 and box["height"] >= 44
    page.screenshot(path=str(SHOTS / "phone.png"), full_page=True)
    context.close()


@pytest.fixture(scope="module")
def chat_app(tmp_path_factory):
    """A tiny random Qwen 3 file with its published chat template, served with replies of 12 tokens."""
    from llm_tflite import Converter
    from llm_tflite.serve.app import Limits, create_app
    from llm_tflite.testing import ServerThread, write_hf_checkpoint

    root = tmp_path_factory.mktemp("chat-browser")
    path = root / "qwen3.tflite"
    Converter(context_length=256, prefill_lengths=(8, 32)).convert(write_hf_checkpoint(root / "ckpt", "qwen3"), str(path))
    served = ServerThread(create_app(path, limits=Limits(max_tokens=12)))
    served.path = path
    yield served
    served.stop()


def test_chat_screen_streams_replies_of_the_conversation(browser, chat_app, page):
    chat_page = browser.new_context(viewport={"width": 900, "height": 900}).new_page()
    chat_page.goto(chat_app.url + "/")
    chat_page.wait_for_function("document.body.dataset.chatReady === 'true'", timeout=30_000)
    assert chat_page.is_visible("#chat")
    runner = InterpreterRunner(chat_app.path)
    messages = []
    for turn, text in enumerate(["Hello there!", "Tell me more."]):
        chat_page.fill("#chat-input", text)
        chat_page.press("#chat-input", "Enter")
        chat_page.wait_for_function(f"Number(document.body.dataset.chatFinished || 0) > {turn}", timeout=60_000)
        messages.append({"role": "user", "content": text})
        expected = runner.chat(messages, 12, "greedy").text
        messages.append({"role": "assistant", "content": expected})
        bubbles = chat_page.locator("#chat-log .turn").all_inner_texts()
        assert len(bubbles) == 2 * (turn + 1) and bubbles[-2] == text
        assert chat_page.locator("#chat-log .turn.assistant").last.text_content() == expected
    assert chat_page.inner_text("#chat-message") == ""
    chat_page.screenshot(path=str(SHOTS / "chat.png"))
    chat_page.click("#chat-reset")
    assert chat_page.locator("#chat-log .turn").count() == 0
    chat_page.context.close()
    # a file without a chat template shows no chat screen
    page.wait_for_function("document.body.dataset.chatReady === 'false'", timeout=30_000)
    assert not page.is_visible("#chat")
