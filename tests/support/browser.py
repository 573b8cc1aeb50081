"""A real browser for the page's tests: Debian's Chromium, driven by Playwright's Python API.

`browser` is one Chromium for the whole session (launching one takes about half a second);
`page` is a fresh context and tab for each test, at a laptop's screen size, that fails the test
when the page logged an error or a warning, threw an uncaught exception, or asked for anything
over a network: the page must work from disk with no server, so every request that is not for a
local file is refused, and recorded.

Without Chromium or Playwright the tests skip with one line saying how to install both, unless
CHAINRULE_REQUIRE_BROWSER is set (as CI's main run sets it), when they fail instead.
"""
from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

import pytest

try:
    from playwright.sync_api import expect, sync_playwright
except ImportError:
    expect = sync_playwright = None

INSTALL_HINT = "apt-get install chromium; pip install -e '.[browser]'"
REQUIRE_VARIABLE = "CHAINRULE_REQUIRE_BROWSER"
DEBIAN_CHROMIUM = Path("/usr/bin/chromium")
# Playwright runs Chromium headless by default. A container has no user namespaces for the
# sandbox, no GPU, and often a /dev/shm too small for a large page; the rest keep Chromium
# itself off the network (updates, sync, field trials), where the page's own requests are
# refused by the route below.
CHROMIUM_FLAGS = ("--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                  "--disable-background-networking", "--disable-component-update",
                  "--no-first-run", "--disable-sync", "--disable-quic")
SCREEN = {"width": 1366, "height": 768}
# Not a network: the page itself, and what a script or style makes in memory.
LOCAL_SCHEMES = ("file:", "data:", "blob:", "about:")
REPORTED_CONSOLE_TYPES = ("error", "warning")


def chromium_executable() -> Path | None:
    found = shutil.which("chromium")
    if found:
        return Path(found)
    return DEBIAN_CHROMIUM if DEBIAN_CHROMIUM.exists() else None


def missing_piece() -> str | None:
    """What these tests lack to run, or None."""
    if sync_playwright is None:
        return "Playwright is not installed"
    if chromium_executable() is None:
        return "Chromium is not installed"
    return None


@pytest.fixture(scope="session")
def browser():
    missing = missing_piece()
    if missing and os.environ.get(REQUIRE_VARIABLE):
        pytest.fail(f"{REQUIRE_VARIABLE} is set, so the browser tests must run, but {missing} "
                    f"(to install both: {INSTALL_HINT})", pytrace=False)
    if missing:
        pytest.skip(f"{missing} (the browser tests need both: {INSTALL_HINT}; "
                    f"{REQUIRE_VARIABLE}=1 makes this a failure)")
    # launch() gives the browser a new, empty profile directory of its own and removes it on
    # close, so no state survives from one run to the next.
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(chromium_executable()),
                                              args=list(CHROMIUM_FLAGS))
        yield chromium
        chromium.close()


class PageProblems:
    """What a page did that a page from disk must not: console errors and warnings, uncaught
    exceptions, and requests for anything but local files."""

    def __init__(self):
        self.console: list[str] = []
        self.exceptions: list[str] = []
        self.requests: list[str] = []

    def watch(self, context, page) -> None:
        page.on("console", self._console_message)
        page.on("pageerror", lambda error: self.exceptions.append(str(error)))
        context.route("**/*", self._route)
        context.route_web_socket("**/*", self._web_socket)

    def _console_message(self, message) -> None:
        if message.type in REPORTED_CONSOLE_TYPES:
            where = message.location
            self.console.append(f"{message.type}: {message.text} "
                                f"({where['url']}:{where['lineNumber']})")

    def _route(self, route) -> None:
        url = route.request.url
        if url.startswith(LOCAL_SCHEMES):
            route.continue_()
            return
        self.requests.append(url)
        route.abort()

    def _web_socket(self, socket) -> None:
        self.requests.append(socket.url)
        socket.close()

    def report(self) -> str:
        lines = [*(f"console {line}" for line in self.console),
                 *(f"uncaught exception: {line}" for line in self.exceptions),
                 *(f"network request refused: {url}" for url in self.requests)]
        return "\n".join(lines)


@contextlib.contextmanager
def watched_tab(browser):
    """A new tab in a new context (its own storage, so a theme one test chooses does not carry
    over to the next), and the `PageProblems` seen until the context closes."""
    context = browser.new_context(viewport=SCREEN, color_scheme="light", reduced_motion="reduce",
                                  service_workers="block")
    tab = context.new_page()
    problems = PageProblems()
    problems.watch(context, tab)
    try:
        yield tab, problems
    finally:
        # A round trip to the page delivers the events it sent before, so none is missed.
        if not tab.is_closed():
            tab.evaluate("0")
        context.close()


@pytest.fixture
def page(browser):
    """A fresh tab; the test fails at teardown if the page misbehaved."""
    with watched_tab(browser) as (tab, problems):
        yield tab
    if problems.report():
        pytest.fail(f"the page misbehaved:\n{problems.report()}", pytrace=False)


def open_file(tab, path: Path) -> None:
    """Open `path` from disk, as a reader would by double-clicking it."""
    tab.goto(Path(path).resolve().as_uri())
