"""The dashboard end to end in headless Chromium: real backends, real connections.

Drives Debian's ``/usr/bin/chromium`` with Playwright (no browser download).
Outside CI the test is skipped when either is missing; in CI (``CI`` set) it
fails instead, since CI installs both. With ``EVENFLOW_DASHBOARD_SCREENSHOT``
set to a path, the final frame is saved there too (``make``-free way to
refresh ``docs/images/dashboard.png``).
"""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.peers import HOST, free_port, held_connections, start_backends, wait_for

CHROMIUM = "/usr/bin/chromium"


def _missing() -> str | None:
    if not (os.access(CHROMIUM, os.X_OK) or shutil.which("chromium")):
        return f"{CHROMIUM} not found (Debian package chromium: scripts/ensure-debian-packages chromium:chromium)"
    try:
        import playwright.async_api  # noqa: F401
    except ImportError:
        return "playwright not installed (pip install playwright; no `playwright install` needed)"
    return None


@pytest.fixture
async def page() -> Any:
    why = _missing()
    if why is not None:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the browser test: {why}")
        pytest.skip(why)
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            context = await browser.new_context(viewport={"width": 1280, "height": 760}, device_scale_factor=1)
            yield await context.new_page()
        finally:
            await browser.close()


# What the page shows per backend row: address -> (active count, status text).
ROWS_JS = """() => Object.fromEntries([...document.querySelectorAll('[data-backend]')].map(row => [
    row.dataset.backend,
    [Number(row.querySelector('.count').textContent), row.querySelector('.state').textContent, row.className],
]))"""


async def test_bars_follow_the_backends_and_a_drain_shows(proxy, page, tmp_path: Path) -> None:
    backends = await start_backends(3)
    path = tmp_path / "backends"
    path.write_text("".join(f"{b.address}\n" for b in backends[:2]))
    port = free_port()
    p = proxy(
        {"listeners": [{"name": "postgres", "listen": f"{HOST}:{port}", "backends": {"file": str(path)}, "drain_timeout": "60s"}]}
    )
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    await page.goto(p.admin + "/")

    async def rows() -> dict[str, list[Any]]:
        result: dict[str, list[Any]] = await page.evaluate(ROWS_JS)
        return result

    async def page_matches_backends() -> bool:
        # Listed in the file, or gone from it but still draining its connections.
        shown = await rows()
        want = {b.address: b.active for b in backends if b.address in path.read_text() or b.active}
        return {address: count for address, (count, _, _) in shown.items()} == want

    await wait_for(page_matches_backends, timeout=10, interval=0.1)
    assert {state for _, state, _ in (await rows()).values()} == {"ready"}

    async with held_connections(port, 6):
        await wait_for(page_matches_backends, timeout=10, interval=0.1)
        assert sorted(count for count, _, _ in (await rows()).values()) == [3, 3]
        await asyncio.sleep(2)  # a flat stretch on the imbalance chart

        # Scale up: the newcomer shows at 0, then takes the next connections.
        leaving = backends[2]
        path.write_text("".join(f"{b.address}\n" for b in backends))
        await wait_for(page_matches_backends, timeout=10, interval=0.1)
        assert (await rows())[leaving.address][:2] == [0, "ready"]
        await asyncio.sleep(2)  # the imbalance (3, 3, 0) shows on the chart
        async with held_connections(port, 3):
            assert [b.active for b in backends] == [3, 3, 3]
            await wait_for(page_matches_backends, timeout=10, interval=0.1)
            assert "9" in (await page.inner_text(".totals"))

            # Discovery drops the newcomer again: it drains, keeping its connections.
            path.write_text("".join(f"{b.address}\n" for b in backends[:2]))

            async def drained() -> bool:
                return (await rows())[leaving.address][1] == "draining"

            await wait_for(drained, timeout=10, interval=0.1)
            count, state, classes = (await rows())[leaving.address]
            assert (count, state) == (leaving.active, "draining")
            assert "draining" in classes.split()
            events = await page.inner_text("ol.events")
            assert f"backend added {leaving.address}" in events
            assert f"backend draining {leaving.address}" in events
            assert await page.locator("svg.chart polyline").count() == 1

            await page.screenshot(path=str(tmp_path / "dashboard.png"), full_page=True)
            target = os.environ.get("EVENFLOW_DASHBOARD_SCREENSHOT")
            if target:
                await asyncio.sleep(3)  # a few more chart points for the README's picture
                await page.set_viewport_size({"width": 1100, "height": 540})  # no empty band below the card
                await page.screenshot(path=target, full_page=True)

            # A phone: the layout must fit the width without sideways scrolling.
            await page.set_viewport_size({"width": 390, "height": 844})
            overflow = await page.evaluate("() => document.documentElement.scrollWidth - window.innerWidth")
            assert overflow <= 0
    assert errors == []
