"""Browser fixtures: one Chromium per run; a fresh context and page per test."""

from __future__ import annotations

import pytest

from tests.support.browser import chromium_missing_reason, launch_browser, new_context


@pytest.fixture(scope="session")
async def browser():
    reason = chromium_missing_reason()
    if reason:
        pytest.skip(reason)
    async with launch_browser() as launched:
        yield launched


@pytest.fixture
async def context(browser):
    context = await new_context(browser)
    yield context
    await context.close()


@pytest.fixture
async def page(context):
    # Closed with its context.
    return await context.new_page()
