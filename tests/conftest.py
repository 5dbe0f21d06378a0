"""Shared fixtures: every test gets its own empty ROTE_HOME, and torch runs on one thread (the
test machine has two cores shared with other jobs; two threads there are >10x slower); `serve`
serves a folder over HTTP on 127.0.0.1 (the tests use no network)."""
from __future__ import annotations

import http.server
import threading

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def rote_home(monkeypatch, tmp_path_factory):
    """A fresh, not yet existing ROTE_HOME for each test: nothing is written into the repo."""
    home = tmp_path_factory.mktemp("home") / "rote_home"
    monkeypatch.setenv("ROTE_HOME", str(home))
    return home


@pytest.fixture
def serve(monkeypatch):
    """`serve(folder)` serves `folder` over HTTP on 127.0.0.1 from a thread until the test ends; it
    returns the base URL and the list of paths requested so far."""
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    servers = []

    def start(folder):
        requested = []

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, directory=str(folder), **kwargs)

            def log_message(self, format, *args):
                requested.append(self.path)

        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}", requested

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()
