"""The HTML report in a real headless browser (Debian's chromium driven by Playwright): the pass
table is visible with the run's figures, nothing is fetched from anywhere, the failures filter
works. Skips, saying what to install, without chromium or playwright."""

from __future__ import annotations

import os
import shutil

import pytest

from rung_compare import html_report
from rung_compare.cache import ReplyCache
from rung_compare.report import cells, rate
from rung_compare.runner import run_suite
from rung_compare.suite import load_suite

from tests.fake_llm_server import TEST_KEY as KEY

CHROMIUM = "/usr/bin/chromium"


@pytest.fixture(scope="module")
def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("the browser test needs playwright: pip install playwright (it is in rung's test extra)")
    if not (os.path.exists(CHROMIUM) or shutil.which("chromium")):
        pytest.skip(f"the browser test needs Debian's chromium at {CHROMIUM}: apt-get install chromium")
    with sync_playwright() as p:
        launched = p.chromium.launch(executable_path=shutil.which("chromium") or CHROMIUM, headless=True,
                                     args=["--no-sandbox", "--disable-background-networking"])
        yield launched
        launched.close()


def test_the_report_shows_the_pass_table_and_loads_nothing(browser, server, tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)
    suite_path = tmp_path / "suite.yaml"
    suite_path.write_text(f"""
description: <b>not markup</b>
prompts: ["Say {{{{w}}}}", {{label: short, text: "{{{{w}}}}"}}]
backends:
  - {{name: openai, model: gpt-test, base_url: "{server.openai_base_url}", label: oa}}
  - {{name: anthropic, model: claude-test, base_url: "{server.anthropic_base_url}", label: an,
     sampling: {{max_tokens: 1}}}}
tests:
  - {{vars: {{w: one}}, assert: [{{type: contains, value: Say}}]}}
  - {{vars: {{w: two}}, assert: [{{type: contains, value: two}}]}}
  - {{vars: {{w: "<script>alert(1)</script>"}}}}
""")
    run = run_suite(load_suite(suite_path), ReplyCache(tmp_path / "cache"))
    report = tmp_path / "report.html"
    html_report.write(run, report)

    page = browser.new_page(viewport={"width": 1200, "height": 800})
    fetched, errors, dialogs = [], [], []
    page.on("request", lambda request: fetched.append(request.url))
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    page.goto(report.as_uri())
    table = page.locator("#pass-rates")
    assert table.is_visible()
    headers = table.locator("thead th").all_inner_texts()
    assert headers == ["prompt", "oa", "an"]
    rows = [row.locator("th, td").all_inner_texts() for row in table.locator("tbody tr").all()]
    by_key = {(c.prompt, c.backend): c for c in cells(run)}
    assert rows == [[p, rate(by_key[(p, "oa")]), rate(by_key[(p, "an")])] for p in ("Say {{w}}", "short")]
    # from the fake server's echo: every full reply passes; cut to one token ("echo:") only the case
    # without assertions does
    assert rows[0][1] == "100% (3/3)" and rows[0][2] == "33% (1/3)"
    assert page.locator("h1").inner_text() == "rung compare: <b>not markup</b>"  # escaped, shown as text
    assert fetched == [report.as_uri()] and errors == [] and dialogs == []  # self-contained, nothing ran

    results = page.locator("#results tbody tr")
    assert results.count() == 12
    page.check("#only-failures")
    visible = [row for row in results.all() if row.is_visible()]
    assert len(visible) == sum(not r.passed for r in run.results) > 0
    assert all("fail" in row.inner_text() for row in visible)
    page.close()
    assert KEY not in report.read_text()
