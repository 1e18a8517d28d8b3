"""Debian's Chromium for the page's tests and its screenshot (docs/screenshot.py): one set of
flags."""

from __future__ import annotations

import shutil

# The machines here have no internet: without the background-networking flags Chromium keeps
# opening connections that are refused, many at a time.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def chromium_path() -> str | None:
    """Debian's Chromium (never a browser Playwright downloads: the machines cannot fetch one)."""
    return shutil.which("chromium") or shutil.which("chromium-browser")
