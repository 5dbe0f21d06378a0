"""A Sphinx extension with two fixes to Jupyter Book 1's pages (`_config.yml` loads it).

- sphinx-thebe adds its configuration script once per read of the sources, and Jupyter Book reads
  them twice: every page declared `const THEBE_JS_URL` twice, a console error on every page.
  Identical scripts are kept once.
- pydata-sphinx-theme reads the light/dark mode from `default_mode`, empty unless set: every first
  visit logged "Got invalid theme mode". The book's default is light.
"""
from __future__ import annotations


def unique_scripts(app, pagename, templatename, context, doctree):
    """Drop repeated script entries (same file or body, same attributes) from a page."""
    seen, kept = set(), []
    for script in context.get("script_files", []):
        key = (getattr(script, "filename", script) or "", sorted(getattr(script, "attributes", {}).items()))
        if repr(key) not in seen:  # the same script is added once with filename None, once with ""
            seen.add(repr(key))
            kept.append(script)
    context["script_files"] = kept
    context.setdefault("default_mode", "light")


def setup(app):
    app.connect("html-page-context", unique_scripts, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
