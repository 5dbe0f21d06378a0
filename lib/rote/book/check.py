"""Open the built book in a real browser with the network cut, and check what a reader sees.

    python -m rote.book.check _build/html          # screenshots go to _build/screenshots/

Headless Chromium (Debian's `chromium`, driven by playwright's Python API) loads every page from a
local server; any request to another host is blocked and reported. On each page every chart
placeholder must hold a drawn Vega view (an svg with marks), and the console must stay free of
errors. A full-page screenshot of each page is saved for a human look. A page that only redirects
(Jupyter Book's root index.html) is not opened, since the redirect would navigate away mid-check; its
target must exist, and is checked as a page of its own.
"""
from __future__ import annotations

import argparse
import functools
import http.server
import os
import re
import shutil
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

CHART = "div.rote-chart, div[id^='altair-viz'], div.vega-embed"  # every way a chart can be placed
DRAWN = "svg g[class*='mark-']"  # a Vega view drawn as svg, with its marks
REDIRECT = re.compile(r"""<meta\s+http-equiv=["']refresh["']\s+content=["']\d+;\s*url=([^"']+)["']""", re.I)


@dataclass
class Page:
    """What the browser saw on one page."""
    path: str
    charts: int = 0
    drawn: int = 0
    errors: list = field(default_factory=list)
    external: list = field(default_factory=list)
    redirect: str | None = None  # where a redirect-only page sends the reader

    @property
    def ok(self) -> bool:
        return self.drawn == self.charts and not self.errors and not self.external

    def problems(self) -> str:
        out = [f"{self.charts - self.drawn} of {self.charts} charts not drawn"] if self.drawn < self.charts else []
        out += [f"console: {e}" for e in self.errors] + [f"request to another host: {u}" for u in self.external]
        return f"{self.path}: " + "; ".join(out)


def chromium() -> str:
    """The Chromium executable: $CHROMIUM, else `chromium` on the PATH."""
    path = os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not path:
        raise FileNotFoundError("chromium not found: install it (apt-get install -y chromium; `make install` "
                                "does it as root) or set CHROMIUM to its path")
    return path


@contextmanager
def serve(root: Path):
    """A local HTTP server of `root` on a free port of 127.0.0.1; yields its base URL."""
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    handler = functools.partial(Quiet, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


def block_other_hosts(host: str, blocked: list):
    """A route handler that lets requests to `host` through and aborts (and lists) all others."""
    def route(r):
        if urlparse(r.request.url).netloc == host:
            r.continue_()
        else:
            blocked.append(r.request.url)
            r.abort()
    return route


def redirect_target(page: Path) -> str | None:
    """The URL a redirect-only page (a meta refresh and nothing else to read) sends to, else None."""
    text = page.read_text(errors="replace")
    match = REDIRECT.search(text)
    return match.group(1).split("#")[0] if match and len(text) < 2_000 else None


def check_book(html: Path, screenshots: Path | None = None, timeout_ms: int = 20_000) -> list[Page]:
    """Open every page of the built book `html`; return what each showed."""
    from playwright.sync_api import sync_playwright

    html = Path(html)
    pages = sorted(p.relative_to(html).as_posix() for p in html.rglob("*.html")
                   if not p.relative_to(html).parts[0].startswith(("_", "genindex", "search")))
    if screenshots:
        screenshots.mkdir(parents=True, exist_ok=True)
    results = []
    with serve(html) as base, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium(), args=["--no-sandbox"])
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        host = urlparse(base).netloc
        for path in pages:
            seen = Page(path)
            target = redirect_target(html / path)
            if target is not None:
                seen.redirect = target
                if not ((html / path).parent / target).is_file():
                    seen.errors.append(f"redirects to {target}, which is not in the book")
                results.append(seen)
                continue
            page = context.new_page()
            page.route("**/*", block_other_hosts(host, seen.external))
            page.on("console", lambda m, seen=seen: seen.errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e, seen=seen: seen.errors.append(str(e)))
            page.goto(base + path, wait_until="load")
            seen.charts = page.locator(CHART).count()
            if seen.charts:
                try:
                    page.wait_for_function(f"document.querySelectorAll({CHART!r}).length === "
                                           f"Array.from(document.querySelectorAll({CHART!r}))"
                                           f".filter(c => c.querySelector({DRAWN!r})).length", timeout=timeout_ms)
                except Exception:  # noqa: BLE001 - counted below
                    pass
            seen.drawn = page.evaluate(f"Array.from(document.querySelectorAll({CHART!r}))"
                                       f".filter(c => c.querySelector({DRAWN!r})).length")
            if screenshots:
                page.screenshot(path=str(screenshots / (path.replace("/", "_")[:-5] + ".png")), full_page=True)
            page.close()
            results.append(seen)
        browser.close()
    return results


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("html", nargs="?", default="_build/html", type=Path)
    parser.add_argument("--screenshots", type=Path, help="default: _build/screenshots beside the html folder")
    args = parser.parse_args(argv)
    if not (args.html / "index.html").exists():
        raise SystemExit(f"error: no built book at {args.html} (run make book first)")
    results = check_book(args.html, args.screenshots or args.html.parent / "screenshots")
    for page in results:
        what = f"redirects to {page.redirect}" if page.redirect else f"{page.drawn}/{page.charts} charts drawn"
        print(f"{'ok ' if page.ok else 'BAD'} {page.path}: {what}"
              + ("" if page.ok else f" -- {page.problems()}"))
    bad = [p for p in results if not p.ok]
    if bad:
        raise SystemExit(f"{len(bad)} of {len(results)} pages have problems")


if __name__ == "__main__":
    main()
