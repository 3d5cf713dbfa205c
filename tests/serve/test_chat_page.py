"""The chat page at `/`: served without a key, one self-contained file that calls only its own origin."""

from __future__ import annotations

import re
import urllib.request

from tests.serve.serving import NAME


def test_the_chat_page_is_served_without_a_key(served):
    with urllib.request.urlopen(served.url + "/") as reply:
        assert reply.status == 200
        assert reply.headers["Content-Type"].startswith("text/html")
        policy = reply.headers["Content-Security-Policy"]
        html = reply.read().decode("utf-8")
    assert "default-src 'none'" in policy and "connect-src 'self'" in policy
    assert html.lstrip().lower().startswith("<!doctype html>")
    for part in ('id="model"', 'id="system"', 'id="temperature"', 'id="max-tokens"', 'id="message"', 'id="send"',
                 'id="stop"', 'id="key"', "AbortController", "include_usage", "getReader"):
        assert part in html, part
    assert NAME not in html  # the model list comes from /v1/models, behind the key


def test_the_chat_page_references_only_its_own_origin(served):
    with urllib.request.urlopen(served.url + "/") as reply:
        html = reply.read().decode("utf-8")
    assert re.findall(r"(?i)\b(?:https?:|wss?:|ftp:)//", html) == []
    assert re.findall(r"(?i)(?:src|href|action)\s*=\s*[\"']?//", html) == []  # no protocol-relative URLs
    assert re.findall(r"(?i)url\(\s*[\"']?(?!data:)[^)]*\)", html) == []  # no CSS fetches
    assert re.findall(r"(?i)@import", html) == []
    fetched = re.findall(r"fetch\(\s*[\"']([^\"']+)", html)
    assert fetched and all(url.startswith("/") and not url.startswith("//") for url in fetched)


def test_the_page_is_package_data():
    from importlib.resources import files

    from rung_serve.app import chat_page

    assert (files("rung_serve") / "static" / "chat.html").is_file()
    assert "<title>rung serve: chat</title>" in chat_page()
