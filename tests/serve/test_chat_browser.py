"""The chat page in a real headless browser: Debian's chromium driven by Playwright, against a real
uvicorn server with the tiny torch model. Skips (saying what to install) without chromium or playwright.

RUNG_SAVE_SCREENSHOT=1 saves plugins/rung-serve/docs/chat-page.png (the README's screenshot)."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
from pathlib import Path

import pytest

from rung.records import GenerationRequest, Message

from tests.serve.serving import API_KEY, NAME, ServerThread

CHROMIUM = "/usr/bin/chromium"
SCREENSHOT = Path(__file__).resolve().parents[2] / "plugins" / "rung-serve" / "docs" / "chat-page.png"
WAIT_MS = 60_000  # Playwright's bound on each wait (the tiny model answers in well under a second)


def _playwright():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("the browser test needs playwright: pip install playwright (it is in rung's test extra)")
    if not (os.path.exists(CHROMIUM) or shutil.which("chromium")):
        pytest.skip(f"the browser test needs Debian's chromium at {CHROMIUM}: apt-get install chromium")
    return sync_playwright


class SlowStream:
    """The tiny model with a pause between streamed deltas, so a long reply is still streaming when
    the test presses stop (the tiny model alone writes 100 tokens faster than a click)."""

    def __init__(self, backend, pause: float = 0.05) -> None:
        self._backend, self._pause = backend, pause

    def __getattr__(self, name):
        if name == "decode_slots":  # served through astream (paused), not the batching scheduler
            raise AttributeError(name)
        return getattr(self._backend, name)

    async def astream(self, request):
        async for delta in self._backend.astream(request):
            yield delta
            await asyncio.sleep(self._pause)


@pytest.fixture(scope="module")
def browser():
    sync_playwright = _playwright()
    with sync_playwright() as p:
        launched = p.chromium.launch(executable_path=shutil.which("chromium") or CHROMIUM, headless=True,
                                     args=["--no-sandbox", "--disable-background-networking"])
        yield launched
        launched.close()


@pytest.fixture(scope="module")
def slow_served(tiny_backend):
    from rung_serve.app import create_app

    with ServerThread(create_app({NAME: SlowStream(tiny_backend)}, api_key=API_KEY)) as running:
        yield running


def _open(browser, url):
    page = browser.new_page(viewport={"width": 1000, "height": 720})
    page.set_default_timeout(WAIT_MS)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(url + "/")
    page.wait_for_selector("#key-row.needed")  # the server has a key: the page asks for it
    page.fill("#key", API_KEY)
    page.click("#key-use")
    page.wait_for_selector("body[data-ready='1']")
    return page, errors


def _wait_replies(page, count: int) -> None:
    """Wait (bounded by Playwright) until `count` replies have ended: finished, stopped or failed."""
    from playwright.sync_api import expect

    expect(page.locator(".msg.assistant[data-done='1']")).to_have_count(count, timeout=WAIT_MS)


def _send(page, text: str) -> None:
    page.fill("#message", text)
    page.click("#send")


def test_a_streamed_reply_equals_greedy_generate(browser, served, tiny_backend):
    page, errors = _open(browser, served.url)
    assert page.eval_on_selector_all("#model option", "options => options.map(o => o.value)") == [NAME]
    page.fill("#temperature", "0")
    page.fill("#max-tokens", "24")
    page.fill("#system", "You are terse.")
    _send(page, "hi there")
    reply = page.locator(".msg.assistant").nth(0)
    _wait_replies(page, 1)
    expected = tiny_backend.generate(GenerationRequest(
        messages=(Message("system", "You are terse."), Message("user", "hi there")), max_tokens=24, temperature=0))
    assert reply.locator(".text").text_content() == expected.text
    usage = expected.usage
    assert reply.locator(".usage").text_content().startswith(
        f"{usage.prompt_tokens} prompt + {usage.completion_tokens} completion = {usage.total_tokens} tokens")
    assert reply.locator(".error").text_content() == ""
    assert page.is_enabled("#send") and page.is_disabled("#stop")

    # A second turn sends the whole conversation, the first reply included.
    _send(page, "again")
    _wait_replies(page, 2)
    second = tiny_backend.generate(GenerationRequest(messages=(
        Message("system", "You are terse."), Message("user", "hi there"), Message("assistant", expected.text),
        Message("user", "again")), max_tokens=24, temperature=0))
    assert page.locator(".msg.assistant").nth(1).locator(".text").text_content() == second.text
    if os.environ.get("RUNG_SAVE_SCREENSHOT") == "1":
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOT))
    assert errors == []
    page.close()


def test_an_error_json_is_shown_as_an_error_line(browser, served):
    page, errors = _open(browser, served.url)
    page.fill("#max-tokens", "100000")  # over the tiny model's context: the server answers 400
    _send(page, "hi")
    _wait_replies(page, 1)
    error = page.locator(".msg.assistant .error").text_content()
    assert error.startswith("400: ") and "context" in error
    assert page.locator(".msg.assistant .text").text_content() == ""
    assert errors == []
    page.close()


def test_stop_ends_a_long_reply(browser, slow_served, tiny_backend):
    from playwright.sync_api import expect

    page, errors = _open(browser, slow_served.url)
    page.fill("#temperature", "0")
    page.fill("#max-tokens", "100")
    _send(page, "tell me a long story")
    page.wait_for_selector("body[data-streaming='1']")
    text = page.locator(".msg.assistant .text")
    expect(text).to_have_text(re.compile(r"[\s\S]{3,}"), timeout=WAIT_MS)  # a few deltas have arrived
    page.click("#stop")
    _wait_replies(page, 1)
    assert page.locator(".msg.assistant .note").text_content() == "stopped"
    assert page.is_enabled("#send") and page.is_disabled("#stop")
    stopped = text.text_content()
    page.wait_for_timeout(500)  # ten more deltas' worth: the reply must not grow
    assert text.text_content() == stopped
    assert page.locator(".msg.assistant .usage").text_content() == ""
    story = (Message("user", "tell me a long story"),)
    full = tiny_backend.generate(GenerationRequest(messages=story, max_tokens=100, temperature=0)).text
    assert len(stopped) < len(full) and full.startswith(stopped)  # a prefix of the whole reply: it stopped

    # The server freed the model, and the next turn carries the stopped reply as it was shown.
    page.fill("#max-tokens", "6")
    _send(page, "short one")
    _wait_replies(page, 2)
    after = tiny_backend.generate(GenerationRequest(
        messages=story + (Message("assistant", stopped), Message("user", "short one")), max_tokens=6, temperature=0))
    assert page.locator(".msg.assistant").nth(1).locator(".text").text_content() == after.text
    assert f"{after.usage.completion_tokens} completion" in page.locator(".msg.assistant").nth(1).locator(
        ".usage").text_content()
    assert errors == []
    page.close()


def test_without_a_key_the_page_asks_for_none(browser, tiny_backend):
    from rung_serve.app import create_app

    with ServerThread(create_app({NAME: tiny_backend})) as running:
        page = browser.new_page()
        page.set_default_timeout(WAIT_MS)
        page.goto(running.url + "/")
        page.wait_for_selector("body[data-ready='1']")
        assert page.is_hidden("#key-row") and page.locator("#status").text_content() == ""
        page.fill("#temperature", "0")
        page.fill("#max-tokens", "5")
        _send(page, "hi")
        _wait_replies(page, 1)
        expected = tiny_backend.generate(GenerationRequest(messages=(Message("user", "hi"),), max_tokens=5,
                                                           temperature=0))
        assert page.locator(".msg.assistant .text").text_content() == expected.text
        page.close()
