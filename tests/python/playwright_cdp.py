"""Drives one browser session through the agent's gateway with Playwright's
connect_over_cdp: opens a page, evaluates script, reads text.

    playwright_cdp.py ENDPOINT [TOKEN]

ENDPOINT is the session's HTTP base or websocket URL (with ?token=… when the
token travels in the query); TOKEN, when given, is sent as
`Authorization: Bearer TOKEN` instead. Prints one JSON object with what the
page answered; exits non-zero with Playwright's error otherwise. Playwright
connects to the agent's browser, so it needs no browser of its own.
"""

import asyncio
import json
import sys

from playwright.async_api import async_playwright


async def main(endpoint: str, token: str | None) -> dict:
    headers = {"Authorization": f"Bearer {token}"} if token else None
    async with async_playwright() as playwright:
        browser = await playwright.chromium.connect_over_cdp(
            endpoint, headers=headers, timeout=30_000
        )
        context = browser.contexts[0] if browser.contexts else await browser.new_context()
        page = await context.new_page()
        await page.set_content("<main><p id='greeting'>hello from browserfleet</p></main>")
        answer = await page.evaluate("() => 6 * 7")
        text = await page.text_content("#greeting")
        version = browser.version
        await page.close()
        # No browser.close(): leaving async_playwright() disconnects, and the
        # browser stays the session's.
        return {"evaluate": answer, "text": text, "version": version}


if __name__ == "__main__":
    token = sys.argv[2] if len(sys.argv) > 2 else None
    print(json.dumps(asyncio.run(main(sys.argv[1], token))))
