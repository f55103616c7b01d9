"""Screenshots of every dashboard page against a store, for the README and for review.

    python docs/make_screenshots.py [--store FILE] [--out docs/]

Starts the dashboard headless, opens each page in Debian's Chromium and saves PNGs.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from analysis.store import default_store_path  # noqa: E402
from tests.browser import browser_page, streamlit_server, wait_for_app  # noqa: E402

PAGES = ["runs", "explorer", "generate", "upload", "difficulty", "early-stop", "layers"]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--store", default=str(default_store_path()))
    ap.add_argument("--out", default=str(ROOT / "docs"))
    ap.add_argument("--pages", nargs="*", default=PAGES)
    ap.add_argument("--height", type=int, default=1000)
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with streamlit_server(Path(args.store)) as url, browser_page(1400, args.height) as page:
        for name in args.pages:
            page.goto(f"{url}/{'' if name == PAGES[0] else name}")  # the default page lives at /
            wait_for_app(page)
            page.wait_for_function("() => document.querySelector('[data-testid=\"stApp\"]')"
                                   ".getAttribute('data-test-script-state') === 'notRunning'", timeout=120000)
            page.wait_for_timeout(2500)  # charts draw after the script finishes
            path = out / f"{name}.png"
            page.screenshot(path=str(path), full_page=True)
            print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
