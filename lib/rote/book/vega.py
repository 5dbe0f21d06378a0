"""Figures that render with no network: Vega, Vega-Lite and vega-embed shipped with the book.

altair's default renderer writes a `vegaEmbed` call into the page and loads the three libraries
from a CDN (and, where require.js is on the page for ipywidgets, through it). A reader offline,
behind a firewall, or after the CDN has moved on sees no figure. The book instead ships one
self-contained bundle (`vl-convert-python`'s, pinned to altair's Vega-Lite version) in `_static/`,
loaded by every page, and `rote.book` executes the chapters with the `rote` renderer below, which
draws each chart with that page-wide `vegaEmbed`. In a live notebook (Colab, Jupyter) altair's own
renderer stays in charge.
"""
from __future__ import annotations

import itertools
import json
import os
from pathlib import Path

import altair as alt

from rote.store import write_text

BUNDLE = "vega-bundle.js"
ENV = "ROTE_OFFLINE_CHARTS"  # set to 1 by rote.book while it executes the chapters
_ids = itertools.count()


def vegalite_version() -> str:
    """altair's Vega-Lite version as vl-convert names it ("v6.4.1" -> "6.4")."""
    return ".".join(alt.SCHEMA_VERSION.lstrip("v").split(".")[:2])


def write_bundle(static: Path) -> Path:
    """Write the Vega / Vega-Lite / vega-embed bundle into `static` (the book's _static folder)."""
    import vl_convert

    path = static / BUNDLE
    # The bundle declares top-level names (`_`, ...) that collide with the theme's scripts: wrapped in a
    # function, only the globals it assigns (vegaEmbed, vega, vegaLite) leave it.
    write_text(path, "(function () {\n" + vl_convert.javascript_bundle(vl_version=vegalite_version()) + "\n})();\n")
    return path


def chart_html(spec: dict) -> str:
    """A div and the `vegaEmbed` call that draws `spec` into it, using the bundle the page loaded."""
    div = f"rote-chart-{os.getpid()}-{next(_ids)}"
    return (f'<div id="{div}" class="rote-chart"></div>\n<script type="text/javascript">\n'
            f'vegaEmbed("#{div}", {json.dumps(spec)}, {{"mode": "vega-lite", "renderer": "svg"}})'
            '.catch(console.error);\n</script>')


def renderer(spec: dict, **metadata) -> dict:
    """altair renderer: the chart as offline HTML."""
    return {"text/html": chart_html(spec)}


def static_book() -> bool:
    """Is this kernel executing a chapter for the static book (no live kernel behind the page)?"""
    return os.environ.get(ENV) == "1"


alt.renderers.register("rote", renderer)
if static_book():
    alt.renderers.enable("rote")
