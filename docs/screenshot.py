r"""Save a PNG of the web page translating one sentence, heatmap included (README, docs/page.png).

    .venv/bin/python docs/screenshot.py --url http://127.0.0.1:8000 \
        --text "A dog runs on the beach." --output docs/page.png

Uses Debian's Chromium through Playwright (pip install playwright; never `playwright install`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from playwright.sync_api import sync_playwright

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from the checkout
from tests.browser import CHROMIUM_ARGS, chromium_path  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True, help="the server, e.g. http://127.0.0.1:8000")
    parser.add_argument(
        "--text", required=True, help="the source text (\\n-separated lines allowed)"
    )
    parser.add_argument("--output", required=True, help="the PNG to write")
    parser.add_argument("--api-key", default="", help="for a server started with an API key")
    parser.add_argument(
        "--chromium", default=chromium_path() or "/usr/bin/chromium", help="the browser to drive"
    )
    args = parser.parse_args(argv)

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=args.chromium, args=CHROMIUM_ARGS)
        # Twice the pixels: the PNG stays sharp on high-density screens and when the README
        # scales it.
        page = browser.new_page(viewport={"width": 900, "height": 600}, device_scale_factor=2)
        page.goto(f"{args.url.rstrip('/')}/")
        page.fill("#source", args.text.replace("\\n", "\n"))
        page.fill("#api-key", args.api_key)
        page.click("#translate")
        page.wait_for_selector(
            "body[data-state=done], body[data-state=error]", state="attached", timeout=120_000
        )
        if page.get_attribute("body", "data-state") == "error":
            print(f"the server answered an error: {page.text_content('#error')}", file=sys.stderr)
            return 1
        page.screenshot(path=args.output, full_page=True)
        browser.close()
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
