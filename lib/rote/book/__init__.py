"""The published book: the build (papermill, then Jupyter Book), the browser check, the charts and
their offline renderer, the explorer, the Sphinx extension."""
