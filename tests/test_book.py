"""Every chapter runs under papermill with the tiny profile, and the book builds."""
import json
import re

import papermill
import pytest

from rote import book
from rote.store import REPO_ROOT


def outputs_text(notebook_path) -> str:
    nb = json.loads(notebook_path.read_text())
    texts = []
    for cell in nb["cells"]:
        for out in cell.get("outputs", []):
            texts += out.get("text", []) if isinstance(out.get("text"), list) else [out.get("text", "")]
            for value in out.get("data", {}).values():
                texts.append(value if isinstance(value, str) else "".join(value) if isinstance(value, list) else json.dumps(value))
    return "\n".join(texts)


def test_every_chapter_has_parameters_and_colab_install_cell():
    config_url = re.search(r"repository:\n  url: (\S+)", (REPO_ROOT / "_config.yml").read_text()).group(1)
    for notebook in book.chapters():
        cells = json.loads(notebook.read_text())["cells"]
        tagged = [c for c in cells if "parameters" in c.get("metadata", {}).get("tags", [])]
        assert len(tagged) == 1, notebook
        source = "".join(tagged[0]["source"])
        for name in ("task", "noise", "seed", "profile", "overrides"):
            assert re.search(rf"^{name} = ", source, re.M), (notebook, name)
        install = "".join(cells[1]["source"])
        assert "google.colab" in install and f"git+{config_url}" in install, notebook


def test_book_builds_with_tiny_profile(tmp_path):
    html = book.build("tiny", root=tmp_path)
    pages = {p.stem for p in (html / "book").glob("*.html")}
    assert {n.stem for n in book.chapters()} | {"intro", "protocol"} <= pages
    obs0 = (html / "book" / "observation0.html").read_text()
    assert "vegaEmbed" in obs0  # interactive altair figures in the static page
    assert "In this FDA run" in obs0 and "In this THR run" in obs0
    assert "colab.research.google.com/github/" in obs0


@pytest.mark.parametrize("task,noise,seed", [("thr", 0.1, 3), ("fda", 0.02, 7)])
def test_observation0_with_other_parameters(tmp_path, task, noise, seed):
    out = tmp_path / "out.ipynb"
    papermill.execute_notebook(str(REPO_ROOT / "book" / "observation0.ipynb"), str(out), kernel_name="python3",
                               parameters={"task": task, "noise": noise, "seed": seed, "profile": "tiny"},
                               cwd=str(REPO_ROOT / "book"), progress_bar=False)
    text = outputs_text(out)
    assert f"In this {task.upper()} run ({noise:.0%} noise, seed {seed})" in text
    other = "FDA" if task == "thr" else "THR"
    assert f"In this {other} run" not in text
