"""Tries to leave a session's egress policy with Playwright through the
agent's gateway (connect_over_cdp): loads an allowed page, navigates to and
fetches a blocked one, and asks for a browser context with its own proxy.

    playwright_egress.py WEBSOCKET_URL ALLOWED_URL BLOCKED_URL

Prints one JSON object with what each attempt gave; the Rust test
(tests/suite/egress.rs) judges it, and counts what reached the blocked
server itself.
"""

import asyncio
import json
import sys

from playwright.async_api import async_playwright


async def main(endpoint: str, allowed: str, blocked: str) -> dict:
    result = {}
    async with async_playwright() as playwright:
        browser = await playwright.chromium.connect_over_cdp(endpoint, timeout=30_000)
        context = browser.contexts[0] if browser.contexts else await browser.new_context()
        page = await context.new_page()
        await page.goto(allowed)
        result["allowedTitle"] = await page.title()
        result["fetchBlocked"] = await page.evaluate(
            "url => fetch(url).then(r => r.text()).catch(e => 'failed: ' + e)", blocked
        )
        try:
            response = await page.goto(blocked)
            result["gotoBlocked"] = {
                "status": response.status if response else None,
                "text": await page.text_content("body"),
            }
        except Exception as error:  # a refused navigation may raise
            result["gotoBlocked"] = {"error": str(error)}
        try:
            await browser.new_context(proxy={"server": blocked})
            result["contextWithProxy"] = "created"
        except Exception as error:
            result["contextWithProxy"] = str(error)
        await page.close()
    return result


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3]))))
