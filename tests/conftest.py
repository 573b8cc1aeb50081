import os

import numpy as np
import pytest

from support.fuzzing import LONG_RUN
from support.long_run import LongRun


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def pytest_addoption(parser):
    parser.addoption("--update-golden", action="store_true",
                     help="rewrite the expected IR of the golden tests in tests/ir/")
    parser.addoption("--update-screenshots", action="store_true",
                     help="write the page's screenshots to docs/images/ (tests/test_page_browser.py)")


@pytest.fixture
def update_golden(request):
    return request.config.getoption("--update-golden")


@pytest.fixture
def update_screenshots(request):
    return request.config.getoption("--update-screenshots")


def pytest_configure(config):
    # Verify the IR after lowering and after every pass in every test.
    os.environ["CHAINRULE_VERIFY"] = "1"
    if LONG_RUN:
        config.pluginmanager.register(LongRun(), "chainrule-long-run")


# A new process or a Ray cluster takes seconds: such tests are slow too, so that
# `-m "not slow"` is the quick loop.
TAKE_SECONDS = ("ray", "subprocess")


def pytest_collection_modifyitems(items):
    for item in items:
        if any(item.get_closest_marker(name) for name in TAKE_SECONDS):
            item.add_marker(pytest.mark.slow)
