"""Helpers for the HTML report's tests: the page's text, the numbers of an audit JSON as the
report formats them, and a headless Chromium that lays a page out at a given width.

Chromium comes from the system (``.ci/run`` installs Debian's ``chromium`` when it runs as
root). Without one the browser tests skip on a developer's machine, and **fail** in CI
(``CI`` set to ``true``/``1``, as CI services do) or with ``HESSAUDIT_REQUIRE_BROWSER=1``: the
layout checks must not silently stop running where they are meant to run.
"""

from __future__ import annotations

import html
import json
import math
import os
import re
import shutil
import subprocess
from collections.abc import Iterator, Mapping
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from hessaudit.report._format import fmt_number, fmt_pair

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
#: Flags for a quiet, offline, throwaway headless browser (the profile is a fresh folder).
FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
)  # fmt: skip

#: The page under test goes into the ``srcdoc`` of an iframe exactly ``width`` pixels wide (a
#: headless window is never narrower than 500 pixels, an iframe can be). After the load event
#: this script writes into ``<pre id="probe">``, from inside the frame: the layout's widths;
#: the page's text (``text``: every text node, one a line, closed ``<details>`` included;
#: ``visible``: what is shown); the elements that stick out of the viewport without being
#: inside a box that scrolls (``outside``); and the boxes that scroll sideways
#: (``scrollers``). The report itself has no scripts.
WRAPPER = """<!DOCTYPE html><html><head><meta charset="utf-8">
<style>html, body {{ margin: 0; }} iframe {{ border: 0; display: block; }}</style></head>
<body><iframe id="frame" style="width:{width}px;height:{height}px" srcdoc="{page}"></iframe>
<script>
addEventListener('load', function () {{
  var win = document.getElementById('frame').contentWindow, doc = win.document;
  var root = doc.documentElement, body = doc.body, width = root.clientWidth, out = [];
  body.querySelectorAll('*').forEach(function (el) {{
    var box = el.getBoundingClientRect();
    if (box.width > 0 && (box.right > width + 0.5 || box.left < -0.5) &&
        !el.closest('.scroll, .plot') && out.length < 8) {{
      out.push(el.tagName + '.' + el.className + ' ' + Math.round(box.left) + '..' +
               Math.round(box.right) + ': ' + (el.textContent || '').slice(0, 60));
    }}
  }});
  var scrollers = [];
  body.querySelectorAll('.scroll, .plot').forEach(function (el) {{
    if (el.clientWidth > 0 && el.scrollWidth > el.clientWidth + 1) {{
      var table = el.querySelector('table');
      scrollers.push(el.className + ': ' + (table ? table.className : 'no table') + ' ' +
                     (el.textContent || '').slice(0, 40));
    }}
  }});
  var walker = doc.createTreeWalker(body, NodeFilter.SHOW_TEXT), nodes = [];
  while (walker.nextNode()) {{ nodes.push(walker.currentNode.data); }}
  var probe = {{inner: win.innerWidth, scroll: root.scrollWidth, client: width,
               text: nodes.join('\\n'), visible: body.innerText, outside: out,
               scrollers: scrollers}};
  var pre = document.createElement('pre');
  pre.id = 'probe';
  pre.textContent = JSON.stringify(probe);
  document.body.appendChild(pre);
}});
</script></body></html>"""


def framed(page_html: str, width: int, height: int = 1600) -> str:
    """``page_html`` in an iframe of ``width`` x ``height`` pixels, with the probe script."""
    return WRAPPER.format(width=width, height=height, page=html.escape(page_html, quote=True))


def browser_required() -> bool:
    """Whether a missing browser fails the tests (CI) rather than skipping them."""
    ci = os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}
    return ci or os.environ.get("HESSAUDIT_REQUIRE_BROWSER", "") == "1"


def find_browser() -> str | None:
    for name in BROWSERS:
        found = shutil.which(name)
        if found:
            return found
    return None


def require_browser() -> str:
    """The browser's path; skips the test without one, or fails it where one is required."""
    found = find_browser()
    if found is None:
        message = (
            "no headless Chromium (looked for " + ", ".join(BROWSERS) + "); "
            "install it: apt-get install -y --no-install-recommends chromium "
            "(.ci/run does it when run as root)"
        )
        if browser_required():
            pytest.fail(f"CI=true but {message}")
        pytest.skip(message)
    return found


def run_browser(browser: str, page: Path, profile: Path, *extra: str) -> str:
    """One headless launch on ``page``; its stdout (``--dump-dom``) as text."""
    profile.mkdir(parents=True, exist_ok=True)
    command = [browser, *FLAGS, f"--user-data-dir={profile}", *extra, page.as_uri()]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    return result.stdout


def layout(browser: str, page_html: str, width: int, folder: Path) -> dict[str, Any]:
    """Lay ``page_html`` out ``width`` pixels wide (1600 high); the probe's measurements."""
    copy = folder / f"probe-{width}.html"
    copy.write_text(framed(page_html, width), encoding="utf-8")
    window = f"--window-size={width + 100},1700"
    dom = run_browser(browser, copy, folder / f"profile-{width}", "--dump-dom", window)
    found = re.search(r'<pre id="probe">(.*?)</pre>', dom, re.S)
    assert found, f"no probe in the dumped DOM at {width}px: {dom[-500:]!r}"
    return json.loads(html.unescape(found.group(1)))


class _Text(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag: str, attrs: Any) -> None:
        self._skip += tag in ("style", "script", "title")

    def handle_endtag(self, tag: str) -> None:
        self._skip -= tag in ("style", "script", "title")

    def handle_data(self, data: str) -> None:
        if not self._skip:
            self.parts.append(data)


def page_text(page: str) -> str:
    """The text of an HTML page: its text nodes one a line (styles, scripts, title left out)."""
    parser = _Text()
    parser.feed(page)
    return "\n".join(parser.parts)


_NUMBER = re.compile(r"(?<![\w.+-])[+-]?(?:\d+(?:\.\d*)?(?:e[+-]?\d+)?|inf|nan)(?![\w]|\.\d)")


def number_tokens(text: str) -> set[str]:
    """Every number written in ``text`` (thousands separators removed: ``4,608`` is 4608)."""
    text = re.sub(r"(?<=\d),(?=\d{3}(?!\d))", "", text)
    return set(_NUMBER.findall(text))


def json_numbers(value: Any, path: str = "") -> Iterator[tuple[str, set[str]]]:
    """(where, the texts that show it) for every number of a JSON document: ``fmt_number``'s
    text, and for a gate's observed value and threshold the pair ``fmt_pair`` shows."""
    if isinstance(value, Mapping):
        if {"observed", "threshold"} <= value.keys():
            pair = fmt_pair(value["observed"], value["threshold"])
            for key, text in zip(("observed", "threshold"), pair, strict=True):
                if isinstance(value[key], int | float) and not isinstance(value[key], bool):
                    yield f"{path}.{key}", {text, fmt_number(value[key])}
            value = {k: v for k, v in value.items() if k not in ("observed", "threshold")}
        for key, item in value.items():
            yield from json_numbers(item, f"{path}.{key}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from json_numbers(item, f"{path}[{i}]")
    elif isinstance(value, int | float) and not isinstance(value, bool):
        yield path, {fmt_number(value)}


def missing_numbers(document: Mapping[str, Any], text: str) -> list[str]:
    """The numbers of ``document`` that ``text`` does not show, as ``where = value``."""
    tokens = {token.lstrip("+") for token in number_tokens(text)}
    return [
        f"{where} = {sorted(texts)}"
        for where, texts in json_numbers(document)
        if not texts & tokens
    ]


def with_measures(document: dict) -> dict:
    """The audit with a ``measures`` object like the one ``measure`` writes (kept if present)."""
    layers = document["layers"]
    dist = [layer["dist_fro"] for layer in layers]
    document.setdefault(
        "measures",
        {
            "hessian_term": document["hessian_term"],
            "sum_sqrt_hcal": sum(math.sqrt(max(layer["hcal"], 0.0)) for layer in layers),
            "distance_fro": sum(dist),
            "distance_fro_sq": sum(d * d for d in dist),
            "trace_distance": 12.345678,
            "trace_distance_stderr": 0.9876,
            "trace_distance_trace": "mean-hessian-hutchinson",
            "trace_examples": 32,
            "trace_probes": 8,
            "layers": len(layers),
            "noise_stability": {"mean": 0.0123, "std": 0.0045, "stderr": 0.001,
                                "draws": 20, "eps": 0.01, "data": "eval_data"},
        },
    )  # fmt: skip
    return document
