"""Every chapter runs under papermill with the tiny profile; the book builds, renders offline in a
real browser, hides its parameter cells, reuses unchanged chapters and rejects bad input early."""
import json
import os
import re
import shutil
import subprocess
import sys

import pandas as pd
import papermill
import pytest

import rote
from rote import parameters
from rote.book import build, tables
from rote.book import check as bookcheck
from rote.config import ConfigError
from rote.grid import scorecard
from rote.observations import of_chapter
from rote.store import REPO_ROOT


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """(root, html folder, terminal output) of the tiny book, built once for this module by a child
    process, so that the output of the chapters' kernels is caught too."""
    root = tmp_path_factory.mktemp("book")
    code = f"from pathlib import Path; from rote.book import build; build.build('tiny', root=Path({str(root)!r}))"
    run = subprocess.run([sys.executable, "-c", code], env={**os.environ, "ROTE_HOME": str(root / "home")},
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
    return root, root / "_build" / "html", run.stdout + run.stderr


def outputs_text(notebook_path) -> str:
    nb = json.loads(notebook_path.read_text())
    texts = []
    for cell in nb["cells"]:
        for out in cell.get("outputs", []):
            texts += out.get("text", []) if isinstance(out.get("text"), list) else [out.get("text", "")]
            for value in out.get("data", {}).values():
                texts.append(value if isinstance(value, str) else "".join(value) if isinstance(value, list)
                             else json.dumps(value))
    return "\n".join(texts)


def test_every_chapter_has_parameters_and_colab_install_cell():
    config_url = re.search(r"repository:\n  url: (\S+)", (REPO_ROOT / "_config.yml").read_text()).group(1)
    for notebook in build.chapters():
        cells = json.loads(notebook.read_text())["cells"]
        assert all(c.get("id") for c in cells), notebook  # nbformat 4.5 cells carry ids (a warning, later an error)
        tagged = [c for c in cells if "parameters" in c.get("metadata", {}).get("tags", [])]
        assert len(tagged) == 1, notebook
        source = "".join(tagged[0]["source"])
        for name in scorecard.PARAMETERS if notebook.stem == "scorecard" else parameters.NAMES:  # the grid's own
            assert re.search(rf"^{name} = ", source, re.M), (notebook, name)
        install = "".join(cells[1]["source"])
        assert "google.colab" in install and f"git+{config_url}" in install, notebook


def test_book_builds_with_tiny_profile(built):
    root, html, terminal = built
    assert "observation0: done" in terminal and "without encryption" not in terminal  # kernels over ipc
    pages = {p.stem for p in (html / "book").glob("*.html")}
    assert {n.stem for n in build.chapters()} | {"intro", "protocol"} <= pages
    obs0 = (html / "book" / "observation0.html").read_text()
    assert "vegaEmbed" in obs0  # interactive altair figures in the static page
    assert "In this FDA run" in obs0 and "In this THR run" in obs0
    assert "colab.research.google.com/github/" in obs0


def test_pages_open_with_their_result_and_cut_no_table(built):
    """Every observation page opens with its result box (before its first section), and no table is
    cut anywhere: no elided row or cell, no pandas table with its index, no NaN."""
    for page in sorted((built[1] / "book").glob("*.html")):
        html = page.read_text()
        cells = [re.sub(r"<[^>]+>", "", c).strip() for c in re.findall(r"<t[dh][^>]*>(.*?)</t[dh]>", html, re.S)]
        assert not [c for c in cells if c in ("...", "…") or c.endswith(("...", "…"))], page.name
        assert "NaN" not in cells and "nan" not in cells, page.name
        assert 'class="dataframe' not in html, page.name  # every table goes through rote.book.tables
        if of_chapter(page.stem) is not None:  # an observation's page, the circuits' too
            title = html.rfind("<h1")  # the article's title (the theme repeats it, and has a "Contents" heading, above)
            box, first_section = html.find('class="rote-result"', title), html.find("<h2", title)
            assert 0 < title < box < first_section, page.name


@pytest.mark.parametrize("task,noise,seed", [("thr", 0.1, 3), ("fda", 0.02, 7)])
def test_observation0_with_other_parameters(tmp_path, task, noise, seed):
    out = tmp_path / "out.ipynb"
    build.run_chapter(REPO_ROOT / "book" / "observation0.ipynb", out,
                      {"task": task, "noise": noise, "seed": seed, "profile": "tiny"})
    text = outputs_text(out)
    assert f"In this {task.upper()} run ({noise:.0%} noise, seed {seed})" in text
    other = "FDA" if task == "thr" else "THR"
    assert f"In this {other} run" not in text


def test_pages_hide_parameter_and_install_cells_and_say_how_they_were_run(built):
    page = (built[1] / "book" / "observation0.html").read_text()
    assert "How this page was run" in page and "profile <code" in page and "trained in" in page
    assert "analysed model at step " in page and "Mem-Noisy" in page  # the checkpoint the analyses load, judged
    assert "google.colab" not in page and "any rote.Config field" not in page
    executed = json.loads((built[0] / "_build" / "src" / "book" / "observation0.ipynb").read_text())
    hidden = [c for c in executed["cells"] if "remove-cell" in c["metadata"].get("tags", [])]
    # install, parameters, the parameter check, papermill's injected parameters: still in the notebook
    assert len(hidden) == 4


def test_provenance_gives_the_analysed_models_step_scores_and_regime(tmp_path, monkeypatch):
    monkeypatch.setenv("ROTE_HOME", str(tmp_path))
    trained, untrained = rote.make_config("fda", "tiny"), rote.make_config("thr", "tiny")
    run = rote.store.run_dir(trained)
    run.mkdir(parents=True)
    (run / "metrics.csv").write_text("step,seconds,test_acc,mem_noisy\n0,0,0.1,0.0\n100,60,0.95,0.5\n200,120,0.88,0.99\n")
    line = build.provenance([trained, untrained], {"task": "both", "profile": "tiny"})
    assert (f"FDA run `{rote.config_hash(trained)}` (trained in 2.0 min; analysed model at step 200: test accuracy "
            "88.0%, Mem-Noisy 99.0%, out of regime (memorize only))") in line
    assert f"THR run `{rote.config_hash(untrained)}` (not trained)" in line


def needs_chromium():
    """Skip where Chromium is missing, except on CI, where `make install` must have put it."""
    try:
        bookcheck.chromium()
    except FileNotFoundError:
        if os.environ.get("CI"):
            raise
        pytest.skip("no chromium on this machine (make install puts it there as root)")


def test_book_renders_offline_in_a_browser(built):
    """Every page in headless Chromium with every other host blocked: all charts drawn, no console
    error, no outside request (the CDN-loaded figures and the doubled thebe script failed this)."""
    needs_chromium()
    shots = built[0] / "_build" / "screenshots"
    pages = bookcheck.check_book(built[1], shots)
    assert len(pages) >= len(build.chapters()) + 1
    assert sum(p.charts for p in pages) >= 10
    assert [p.problems() for p in pages if not p.ok] == []
    assert [w for p in pages for w in p.wide + p.cut] == []  # every chart fits its column, no text cut off
    picks = {p.path: p.picks for p in pages if p.picks}  # the explorer: a click on another instance redraws it
    assert list(picks) == ["book/observation2.html"] and all(k["changed"] for k in picks["book/observation2.html"])
    assert [p.path for p in pages if p.redirect] == ["index.html"]  # Jupyter Book's root redirect
    assert len(list(shots.glob("*.png"))) == len([p for p in pages if not p.redirect])


def test_bookcheck_follows_no_redirect_and_flags_a_broken_one(tmp_path):
    """A redirect-only page is not opened (its navigation raced the chart count: a flaky CI failure);
    its target must exist."""
    refresh = '<meta http-equiv="Refresh" content="0; url={}" />'
    (tmp_path / "book").mkdir()
    (tmp_path / "book" / "intro.html").write_text("<html><body><p>Hello</p></body></html>")
    (tmp_path / "index.html").write_text(refresh.format("book/intro.html"))
    (tmp_path / "old.html").write_text(refresh.format("book/gone.html"))
    assert bookcheck.redirect_target(tmp_path / "index.html") == "book/intro.html"
    assert bookcheck.redirect_target(tmp_path / "book" / "intro.html") is None
    needs_chromium()
    pages = {p.path: p for p in bookcheck.check_book(tmp_path)}
    assert pages["index.html"].ok and pages["book/intro.html"].ok
    assert not pages["old.html"].ok and "book/gone.html" in pages["old.html"].problems()


PLANTED = """<html><body><article class="bd-article" style="width: 400px; padding: 0 20px">
<div class="rote-chart"><svg class="marks" width="{width}" height="100"><g class="mark-group role-frame root"><g><g>
<g class="mark-rect"><rect width="50" height="50"/></g>
<g class="mark-group role-title"><g class="mark-text role-title-text"><text x="{x}" y="90">{title}</text></g></g>
</g></g></g></svg></div></article></body></html>"""  # a drawn Vega view as Vega nests it: marks, and a title


def test_bookcheck_flags_a_chart_wider_than_its_column_and_a_title_cut_off(tmp_path):
    needs_chromium()
    (tmp_path / "fits.html").write_text(PLANTED.format(width=380, x=10, title="fits"))
    (tmp_path / "wide.html").write_text(PLANTED.format(width=900, x=10, title="too wide"))
    (tmp_path / "cut.html").write_text(PLANTED.format(width=380, x=250, title="a title that runs past its svg"))
    pages = {p.path: p for p in bookcheck.check_book(tmp_path)}
    assert pages["fits.html"].ok and pages["fits.html"].sizes[0]["column"] == 400
    assert pages["wide.html"].wide == ["chart 1 'too wide' is 900 px wide, its column 400 px"]
    assert not pages["wide.html"].ok and "900 px wide" in pages["wide.html"].problems()
    assert pages["cut.html"].cut == ["chart 1 'a title that runs past its svg': text cut off: 'a title that runs past its svg'"]
    assert not pages["cut.html"].ok and not pages["cut.html"].wide


def test_bookcheck_flags_an_open_table_wider_than_its_column_and_lets_a_folded_one_scroll(tmp_path):
    needs_chromium()
    css = (REPO_ROOT / "_static" / "rote.css").read_text()  # the book's table style: wrapped cells, a scrolling box
    page = ('<html><head><style>{css}</style></head><body><article class="bd-article" style="width: 400px; padding: 0 20px">'
            "{table}</article></body></html>")
    narrow = tables.html_table(pd.DataFrame({"share_kept": [0.25], "epochs": [3]}), "narrow")
    wide = pd.DataFrame([[f"column{i:02d}value" for i in range(12)]], columns=[f"column{i:02d}" for i in range(12)])
    (tmp_path / "fits.html").write_text(page.format(css=css, table=narrow))
    (tmp_path / "wide.html").write_text(page.format(css=css, table=tables.html_table(wide, "too wide")))
    (tmp_path / "folded.html").write_text(page.format(css=css, table=tables.html_table(wide, "folded", fold_after=0)))
    pages = {p.path: p for p in bookcheck.check_book(tmp_path)}
    assert pages["fits.html"].ok and pages["fits.html"].tables[0]["column"] == 400
    assert not pages["wide.html"].ok and pages["wide.html"].wide[0].startswith("table 'too wide' is ")
    assert pages["folded.html"].ok and pages["folded.html"].tables == []


def test_bookcheck_flags_a_pick_that_changes_nothing(tmp_path):
    needs_chromium()
    points = '<g class="mark-symbol role-mark pick_marks"><path d="M20,20h9v9h-9Z"></path><path d="M40,20h9v9h-9Z"></path></g>'
    (tmp_path / "dead.html").write_text(PLANTED.format(width=380, x=10, title="a click does nothing").replace(
        '<g class="mark-rect">', points + '<g class="mark-rect">'))
    page = bookcheck.check_book(tmp_path)[0]
    assert page.picks == [{"before": None, "after": None, "changed": False}]
    assert not page.ok and "left the chart as it was" in page.problems()


def test_vega_bundle_is_shipped_and_pages_load_it(built):
    bundle = built[1] / "_static" / "vega-bundle.js"
    assert bundle.stat().st_size > 100_000
    page = (built[1] / "book" / "observation0.html").read_text()
    assert "vega-bundle.js" in page and "cdn.jsdelivr" not in page and page.count("THEBE_JS_URL") == 1


def test_second_build_reuses_unchanged_chapters(built, capsys, monkeypatch):
    root = built[0]
    monkeypatch.setenv("ROTE_HOME", str(root / "home"))
    capsys.readouterr()
    build.build("tiny", root=root)
    out = capsys.readouterr().out
    assert out.count("unchanged, reused") == len(build.chapters()) and "running" not in out


def test_chapter_key_follows_notebook_parameters_and_models(tmp_path):
    notebook = tmp_path / "observation0.ipynb"
    shutil.copy(REPO_ROOT / "book" / "observation0.ipynb", notebook)
    configs = build.chapter_configs(notebook, {"profile": "tiny"})
    key = build.chapter_key(notebook, {"profile": "tiny"}, configs, "package")
    assert key == build.chapter_key(notebook, {"profile": "tiny"}, configs, "package")
    assert key != build.chapter_key(notebook, {"profile": "tiny", "seed": 1}, configs, "package")
    assert key != build.chapter_key(notebook, {"profile": "tiny"}, configs, "package changed")
    notebook.write_text(notebook.read_text().replace("Observation 0", "Observation zero"))
    assert key != build.chapter_key(notebook, {"profile": "tiny"}, configs, "package")


@pytest.mark.parametrize("parameters,message", [({"nosie": 0.1}, "unknown parameter(s) nosie; allowed: task"),
                                                ({"noise": 1.5}, "noise must be in [0, 1)"),
                                                ({"task": "fad"}, "unknown task 'fad'")])
def test_bad_parameters_fail_before_any_work(tmp_path, parameters, message):
    with pytest.raises(ConfigError) as err:
        build.build("tiny", parameters, root=tmp_path)
    assert message in str(err.value) and "\n" not in str(err.value)
    assert list(tmp_path.iterdir()) == []


def test_paper_profile_without_gpu_stops_with_the_flag_to_force_it(tmp_path, monkeypatch):
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    with pytest.raises(SystemExit, match="--allow-cpu") as err:
        build.build("paper", root=tmp_path)
    assert "\n" not in str(err.value.code)
    assert list(tmp_path.iterdir()) == []


def test_every_chapter_checks_its_parameters_right_after_them():
    for notebook in build.chapters():
        cells = json.loads(notebook.read_text())["cells"]
        at = [i for i, c in enumerate(cells) if "parameters" in c.get("metadata", {}).get("tags", [])][0]
        check = "".join(cells[at + 1]["source"])
        assert "parameters.check(globals()" in check or "check_parameters(globals())" in check, notebook


def test_a_chapter_and_the_build_make_the_same_configs_from_its_parameters():
    """The configs a chapter's own check cell makes (run here on its parameters cell) are the ones
    the build trains for it: one function behind both."""
    for notebook in build.chapters():
        cells = json.loads(notebook.read_text())["cells"]
        at = [i for i, c in enumerate(cells) if "parameters" in c.get("metadata", {}).get("tags", [])][0]
        namespace = {}
        exec("".join(cells[at]["source"]) + "\nprofile = 'tiny'\n", namespace)
        exec("".join(cells[at + 1]["source"]), namespace)
        made = list(namespace["configs"].values()) if "configs" in namespace else []
        expected = build.chapter_configs(notebook, {"profile": "tiny"})
        assert made == expected or notebook.stem in build.WITHOUT_MODELS, notebook
        if notebook.stem not in build.WITHOUT_MODELS:
            assert made and all(c.seed == namespace["seed"] and c.noise == namespace["noise"] for c in made), notebook


@pytest.mark.parametrize("parameters,message", [({"nosie": 0.1}, "unknown parameter(s) nosie; allowed: task"),
                                                ({"noise": 1.5}, "noise must be in [0, 1), got 1.5")])
def test_papermill_with_a_bad_parameter_stops_with_one_line(tmp_path, parameters, message):
    with pytest.raises(papermill.PapermillExecutionError) as err:
        build.run_chapter(REPO_ROOT / "book" / "observation0.ipynb", tmp_path / "out.ipynb", {"profile": "tiny", **parameters})
    assert err.value.ename == "ConfigError" and message in err.value.evalue
    assert err.value.traceback == [f"ConfigError: {err.value.evalue}"]  # no traceback through the library
