"""Browser tests: Debian's Chromium driven by Playwright, against servers started on free loopback ports.

Chromium comes from the system (`apt-get install chromium`, which `make test` does when it is missing), never
from `playwright install`. Where it is missing the tests skip locally and fail in CI. A failing test leaves a screenshot of
its page in var/test-screenshots/.
"""

from __future__ import annotations

import os
import shutil

import pytest

from tests.conftest import REPO, missing

SCREENSHOTS = REPO / "var" / "test-screenshots"
# As root and on a closed network: no sandbox, and none of Chromium's background calls home.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-sync",
                 "--disable-background-networking", "--disable-component-update"]


def chromium_path() -> str:
    found = os.environ.get("RECSYS_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    missing("no Chromium: apt-get install chromium (or set RECSYS_CHROMIUM)")


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    report = yield
    setattr(item, f"report_{report.when}", report)
    return report


@pytest.fixture(scope="session")
def browser():
    from playwright.sync_api import expect, sync_playwright

    # expect()'s own wait (5 s unless set) as long as the pages' actions': a cold server's first page can
    # take longer than 5 s to render on a busy 2-core machine (MLflow's compare view did, in CI).
    expect.set_options(timeout=30_000)
    executable = chromium_path()
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser, request):
    """A fresh page; its screenshot is kept when the test fails."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    context.set_default_timeout(30_000)
    page = context.new_page()
    yield page
    failed = getattr(request.node, "report_call", None)
    if failed is not None and failed.failed:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        name = "".join(c if c.isalnum() or c in "-_." else "_" for c in request.node.nodeid)
        page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)
    context.close()
