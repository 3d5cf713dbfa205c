"""The HTML report: one self-contained page (inline CSS and a few lines of inline script, no
external assets, nothing fetched), with the pass-rate table first, then every cell's figures,
then every result with its reply and what failed."""

from __future__ import annotations

import html
import json
from pathlib import Path

from rung_compare.report import cells, money, rate, seconds
from rung_compare.runner import Run

STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 24px; color: #1d232a; }
h1 { font-size: 20px; margin: 0 0 4px; } h2 { font-size: 16px; margin: 28px 0 8px; }
.meta { color: #5b6570; margin-bottom: 16px; }
table { border-collapse: collapse; margin-bottom: 8px; }
th, td { border: 1px solid #d0d7de; padding: 4px 8px; text-align: left; vertical-align: top; }
th { background: #f3f5f7; } td.num { text-align: right; white-space: nowrap; }
td.rate { text-align: right; font-weight: 600; white-space: nowrap; }
pre { margin: 0; white-space: pre-wrap; word-break: break-word; max-width: 560px; font-size: 12px; }
.pass { color: #116329; font-weight: 600; } .fail { color: #a40e26; font-weight: 600; }
.why { color: #a40e26; font-size: 12px; }
label { user-select: none; }
"""
SCRIPT = """
document.getElementById('only-failures').addEventListener('change', function (e) {
  document.querySelectorAll('#results tbody tr').forEach(function (row) {
    row.hidden = e.target.checked && row.dataset.pass === '1';
  });
});
"""


def _shade(pass_rate: float) -> str:
    """A cell's background: red at 0%, amber at 50%, green at 100%."""
    return f"hsl({int(pass_rate * 120)}, 70%, 88%)"


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def render(run: Run) -> str:
    """The report page as one string."""
    suite = run.suite
    found = cells(run)
    by_key = {(c.prompt, c.backend): c for c in found}
    backends = [b.label for b in suite.backends]
    title = suite.description or suite.path.name
    asked, cached = sum(run.asked.values()), sum(run.cached.values())
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>rung compare: {_e(title)}</title><style>{STYLE}</style></head><body>",
        f"<h1>rung compare: {_e(title)}</h1>",
        f'<div class="meta">{_e(suite.path.name)} · {len(suite.prompts)} prompts × {len(backends)} backends × '
        f"{len(suite.cases)} cases · {asked} asked, {cached} from the cache · {run.wall_s:.2f} s</div>",
        "<h2>Pass rate</h2>", '<table id="pass-rates"><thead><tr><th>prompt</th>',
        *(f"<th>{_e(b)}</th>" for b in backends), "</tr></thead><tbody>",
    ]
    for prompt in suite.prompts:
        parts.append(f'<tr><th title="{_e(prompt.source)}">{_e(prompt.label)}</th>')
        for label in backends:
            cell = by_key[(prompt.label, label)]
            parts.append(f'<td class="rate" style="background:{_shade(cell.pass_rate)}">{_e(rate(cell))}</td>')
        parts.append("</tr>")
    parts += ["</tbody></table>", "<h2>Per prompt and backend</h2>", '<table id="details"><thead><tr>',
              *(f"<th>{h}</th>" for h in ("prompt", "backend", "pass", "errors", "mean latency", "tokens in",
                                          "tokens out", "cost", "cached")), "</tr></thead><tbody>"]
    for cell in found:
        parts.append(
            f"<tr><td>{_e(cell.prompt)}</td><td>{_e(cell.backend)}</td><td class='rate'>{_e(rate(cell))}</td>"
            f"<td class='num'>{cell.errors}</td><td class='num'>{seconds(cell.latency_s)}</td>"
            f"<td class='num'>{cell.prompt_tokens:,}</td><td class='num'>{cell.completion_tokens:,}</td>"
            f"<td class='num'>{money(cell.cost)}</td><td class='num'>{cell.cached}/{cell.total}</td></tr>")
    parts += ["</tbody></table>", "<h2>Results</h2>",
              '<label><input type="checkbox" id="only-failures"> only failures</label>',
              '<table id="results"><thead><tr>',
              *(f"<th>{h}</th>" for h in ("case", "prompt", "backend", "vars", "input", "output", "result")),
              "</tr></thead><tbody>"]
    for result in run.results:
        reasons = [result.reply.error] if result.reply.error else [
            f"{v.kind}: {v.reason}" for v in result.verdicts if not v.passed]
        verdict = ('<span class="pass">pass</span>' if result.passed else
                   '<span class="fail">fail</span>' + "".join(f'<div class="why">{_e(r)}</div>' for r in reasons))
        variables = json.dumps(dict(result.case.vars), ensure_ascii=False, default=str)
        parts.append(
            f'<tr data-pass="{int(result.passed)}"><td>{_e(result.case.description or result.case.where)}</td>'
            f"<td>{_e(result.prompt)}</td><td>{_e(result.backend)}</td><td><pre>{_e(variables)}</pre></td>"
            f"<td><pre>{_e(result.prompt_text)}</pre></td><td><pre>{_e(result.reply.text)}</pre></td>"
            f"<td>{verdict}</td></tr>")
    parts += ["</tbody></table>", f"<script>{SCRIPT}</script>", "</body></html>"]
    return "\n".join(parts)


def write(run: Run, path: Path) -> None:
    """Write the page to `path` (atomically: a reader never sees half a report)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(render(run), encoding="utf-8")
    partial.replace(path)
