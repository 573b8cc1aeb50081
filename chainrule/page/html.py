"""One self-contained HTML file: the page's data as JSON, and the static styles and scripts
inlined beside it, so it opens from disk with no server and no network."""
from __future__ import annotations

import json
import re
from html import escape  # the standard library's, not this module
from importlib import resources

from ..fileio import atomic_write_bytes

# Each script defines one global object, after the objects it uses; boot.js, last, calls the
# renderers the page's data needs.
SCRIPTS = ("common.js", "graph_layout.js", "graph_panels.js", "graph.js", "report.js", "boot.js")
PLACEHOLDER = re.compile(r"\{\{(title|style|script|data)\}\}")
STYLES = ("page.css", "report.css")


def _static(name: str) -> str:
    return resources.files(__package__).joinpath("static", name).read_text(encoding="utf-8")


def embedded_json(data) -> str:
    """JSON that may stand inside a <script> element: `</` and `<!--` would end or confuse
    it, and U+2028/9 are line ends to older JavaScript parsers."""
    text = json.dumps(data, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    return (text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
            .replace("\u2028", "\\u2028").replace("\u2029", "\\u2029"))


def page_html(document: dict) -> str:
    """The page for `document`: {"title", "graph" (graph_document), "training" (report)},
    either of the last two absent when there is none."""
    parts = {"title": escape(document.get("title", "chainrule")),
             "style": "\n".join(_static(name) for name in STYLES),
             "script": "\n".join(_static(name) for name in SCRIPTS),
             "data": embedded_json(document)}
    # One pass, so a placeholder inside what is inserted (a title "{{script}}") stays text.
    return PLACEHOLDER.sub(lambda found: parts[found.group(1)], _static("page.html"))


def write_page(path, document: dict) -> None:
    atomic_write_bytes(path, page_html(document).encode("utf-8"))
