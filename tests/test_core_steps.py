"""Each observation chapter's core step, its central computation written out on the page (nnsight
or plain torch), gives the package's number: the chapters run under papermill on small models that
memorize their noise (the settings of `make golden`), and each core-step cell asserts the agreement
itself, so a disagreement is a failed cell."""
import json
import os

import pytest

from rote.book import build
from rote.store import REPO_ROOT

SMALL = {"profile": "tiny", "noise": 0.1, "overrides": {"n_embd": 64, "max_steps": 1200, "eval_every": 100}}
CHAPTERS = ["observation0", "observation1", "observation2", "observation3", "observation4", "circuits"]


@pytest.fixture(scope="module")
def rote_home(tmp_path_factory):
    """One ROTE_HOME for the module: the small models are trained by the first chapter, loaded by the rest."""
    home, before = tmp_path_factory.mktemp("core-steps"), os.environ.get("ROTE_HOME")
    os.environ["ROTE_HOME"] = str(home)
    yield home
    if before is None:
        del os.environ["ROTE_HOME"]
    else:
        os.environ["ROTE_HOME"] = before


def core_step(cells: list) -> dict:
    tagged = [c for c in cells if "core-step" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1, "one cell tagged core-step per observation chapter"
    return tagged[0]


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_the_core_step_on_the_page_gives_the_package_number(rote_home, tmp_path, chapter):
    out = tmp_path / f"{chapter}.ipynb"
    build.run_chapter(REPO_ROOT / "book" / f"{chapter}.ipynb", out, SMALL)
    cell = core_step(json.loads(out.read_text())["cells"])
    text = json.dumps(cell["outputs"])
    assert cell["outputs"] and "error" not in {o["output_type"] for o in cell["outputs"]}
    assert "memorized no noisy instance" not in text and "no circuits" not in text, \
        "the small models must memorize: the core step ran its fallback"
