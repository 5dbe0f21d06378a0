"""Open the built book in a real browser with the network cut, and check what a reader sees.

    python -m rote.book.check _build/html          # screenshots go to _build/screenshots/

Headless Chromium (Debian's `chromium`, driven by playwright's Python API) loads every page from a
local server; any request to another host is blocked and reported. On each page every chart
placeholder must hold a drawn Vega view (an svg with marks) that fits the text column (with its
controls, at a laptop's 1280 px), as must every table shown open (a folded one may scroll
sideways); no text of a chart (titles, labels) may be cut off at the edge of
its svg or of the column, and the console must stay free of errors. Where a chart lets the reader
pick an instance (marks of a view named `pick`, as `charts.explorer_chart`), one other instance is
clicked and the rest of the chart must change. A full-page screenshot of each page is saved for a
human look. A page that only redirects (Jupyter Book's root index.html) is not opened, since the
redirect would navigate away mid-check; its target must exist, and is checked as a page of its own.
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
COLUMN = "article.bd-article, article, main, body"  # the text column a chart must fit (sphinx-book-theme's first)
VIEWPORT = {"width": 1280, "height": 900}
SLACK = 1  # px of rounding allowed at an edge
# The left and right edge (px) of an element's content box: what a chart or a table must fit in its column.
CONTENT_BOX = """el => {
    const style = getComputedStyle(el), box = el.getBoundingClientRect();
    return [box.left + parseFloat(style.borderLeftWidth) + parseFloat(style.paddingLeft),
            box.right - parseFloat(style.borderRightWidth) - parseFloat(style.paddingRight)];
  }"""
# Per top-level chart: its width (svg or canvas and any controls) against the content box of its column,
# and the texts of its svg that reach past the svg or the column.
MEASURE = "([chart, column, slack]) => { const contentBox = " + CONTENT_BOX + """;
  return Array.from(document.querySelectorAll(chart))
  .filter(c => !(c.parentElement && c.parentElement.closest(chart)))
  .map(c => {
    const view = c.querySelector("svg.marks, canvas") || c.querySelector("svg, canvas");
    if (!view) return null;
    const [left, right] = contentBox(c.closest(column));
    const parts = [view, ...c.querySelectorAll(".vega-bindings")].map(e => e.getBoundingClientRect());
    const from = Math.min(...parts.map(r => r.left)), to = Math.max(...parts.map(r => r.right));
    const svg = view.getBoundingClientRect(), title = view.querySelector(".root > g > g > .role-title text");
    const cut = Array.from(view.querySelectorAll("text")).filter(t => {
      const r = t.getBoundingClientRect();
      return r.width > 0 && (r.left < Math.max(svg.left, left) - slack || r.right > Math.min(svg.right, right) + slack);
    }).map(t => t.textContent);
    const lines = title ? Array.from(title.querySelectorAll("tspan")).map(t => t.textContent) : [];
    return {title: lines.length ? lines.join(" ") : title ? title.textContent : "",
            width: Math.round(to - from), column: Math.round(right - left),
            over: Math.round(Math.max(to - right, left - from)), cut: cut};
  }).filter(m => m); }"""
# Per table shown open (a folded table, one the reader opens, may scroll sideways): its width against
# the content box of its column.
TABLES = "([column]) => { const contentBox = " + CONTENT_BOX + """;
  return Array.from(document.querySelectorAll("table.rote-table"))
  .filter(t => !t.closest("details"))
  .map(t => {
    const [left, right] = contentBox(t.closest(column)), inner = right - left;
    const caption = t.querySelector("caption");
    return {title: caption ? caption.textContent : "", width: Math.round(t.scrollWidth), column: Math.round(inner),
            over: Math.round(t.scrollWidth - inner)};
  }); }"""
PICKABLE = "g.pick_marks path"  # the marks of a view named "pick" (rote.book.charts.PICK)
# What a chart shows outside its pick view: its texts and the shapes of its marks.
SHOWN = """c => Array.from(c.querySelectorAll("svg text, svg path"))
  .filter(e => !e.closest("g.pick_marks")).map(e => e.textContent || e.getAttribute("d")).join("|")"""
# The instance a chart names as picked (its `picked` view's text) and its dropdown's value, if any.
PICKED = """c => {
  const name = c.querySelector("g.picked_marks text"), select = c.querySelector("select");
  const value = select ? select.value : null;
  const lines = name ? Array.from(name.querySelectorAll("tspan")).map(t => t.textContent) : [];
  return {name: name ? (lines.length ? lines.join(" ") : name.textContent) : value, select: value};
}"""
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
    sizes: list = field(default_factory=list)  # per drawn chart: title, width, column, over (px), cut (texts)
    tables: list = field(default_factory=list)  # per table shown open: title (its caption), width, column, over (px)
    picks: list = field(default_factory=list)  # per chart with a pick view: picked before and after a click, changed

    @property
    def wide(self) -> list[str]:
        """The charts and the tables shown open that are wider than their column."""
        return ([f"chart {i} {s['title']!r} is {s['width']} px wide, its column {s['column']} px"
                 for i, s in enumerate(self.sizes, 1) if s["over"] > SLACK]
                + [f"table {t['title']!r} is {t['width']} px wide, its column {t['column']} px"
                   for t in self.tables if t["over"] > SLACK])

    @property
    def cut(self) -> list[str]:
        """The texts cut off at the edge of their chart or column."""
        return [f"chart {i} {s['title']!r}: text cut off: {t!r}" for i, s in enumerate(self.sizes, 1) for t in s["cut"]]

    @property
    def ok(self) -> bool:
        return (self.drawn == self.charts and not self.errors and not self.external and not self.wide and not self.cut
                and all(p["changed"] for p in self.picks))

    def problems(self) -> str:
        out = [f"{self.charts - self.drawn} of {self.charts} charts not drawn"] if self.drawn < self.charts else []
        out += self.wide + self.cut
        out += [f"clicking instance {p['after']!r} left the chart as it was" for p in self.picks if not p["changed"]]
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


def widest(a: dict, b: dict) -> dict:
    """Two measures of one chart as one: the wider, and every text cut off in either."""
    return {**max(a, b, key=lambda m: m["over"]), "cut": list(dict.fromkeys(a["cut"] + b["cut"]))}


def click_picks(page, timeout_ms: int = 5_000) -> list[dict]:
    """In every chart with a pick view of two or more marks, click the last that picks another instance.
    Per chart: the instance named before and after (the text of its `picked` view, else its
    dropdown's value) and whether the rest of the chart, and its dropdown if it has one, changed."""
    out = []
    charts = page.locator(CHART)
    for i in range(charts.count()):
        chart, marks = charts.nth(i), charts.nth(i).locator(PICKABLE)
        if marks.count() < 2:  # nothing else to pick
            continue
        before, shown = chart.evaluate(PICKED), chart.evaluate(SHOWN)
        for k in range(marks.count() - 1, max(-1, marks.count() - 6), -1):
            marks.nth(k).scroll_into_view_if_needed()
            box = marks.nth(k).bounding_box()
            page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
            try:
                page.wait_for_function(f"([c, before]) => ({SHOWN})(c) !== before",
                                       arg=[chart.element_handle(), shown], timeout=timeout_ms)
            except Exception:  # noqa: BLE001 - unchanged; try the next mark
                continue
            break
        after = chart.evaluate(PICKED)
        out.append({"before": before["name"], "after": after["name"],
                    "changed": chart.evaluate(SHOWN) != shown and after["select"] != before["select"]})
    return out


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
        context = browser.new_context(viewport=VIEWPORT)
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
            seen.sizes = page.evaluate(MEASURE, [CHART, COLUMN, SLACK])
            seen.tables = page.evaluate(TABLES, [COLUMN])
            if seen.drawn:
                seen.picks = click_picks(page)
            if seen.picks:  # a picked instance may draw wider or longer texts than the first
                seen.sizes = [widest(a, b) for a, b in zip(seen.sizes, page.evaluate(MEASURE, [CHART, COLUMN, SLACK]))]
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
    parser.add_argument("--sizes", action="store_true", help="print each chart's and open table's width and its column's")
    args = parser.parse_args(argv)
    if not (args.html / "index.html").exists():
        raise SystemExit(f"error: no built book at {args.html} (run make book first)")
    results = check_book(args.html, args.screenshots or args.html.parent / "screenshots")
    for page in results:
        what = f"redirects to {page.redirect}" if page.redirect else f"{page.drawn}/{page.charts} charts drawn"
        what += "".join(f", clicked instance {p['after']!r} (was {p['before']!r})" for p in page.picks)
        print(f"{'ok ' if page.ok else 'BAD'} {page.path}: {what}"
              + ("" if page.ok else f" -- {page.problems()}"))
        for i, size in enumerate(page.sizes if args.sizes else [], 1):
            print(f"    chart {i} {size['title']!r}: {size['width']} px in a column of {size['column']} px")
        for size in page.tables if args.sizes else []:
            print(f"    table {size['title']!r}: {size['width']} px in a column of {size['column']} px")
    bad = [p for p in results if not p.ok]
    if bad:
        raise SystemExit(f"{len(bad)} of {len(results)} pages have problems")


if __name__ == "__main__":
    main()
