"""The THR regime map: fact repeats in the training epoch, the regime read from metrics, and the
record of runs that the appendix draws."""
import dataclasses

import numpy as np
import pandas as pd
import pytest

import rote
from rote.book import tables
from rote.grid import regimes
from rote.runs.data import load_dataset
from rote.runs.train import training_rows


def curves(test, mem, facts=None):
    """A metrics table from lists of held-out accuracy and Mem-Noisy, one evaluation per minute."""
    n = len(test)
    return pd.DataFrame({"step": np.arange(n) * 100, "epoch": np.arange(n) * 1.0, "seconds": np.arange(n) * 60.0,
                         "test_acc": test, "mem_noisy": mem, "facts_acc": facts or [1.0] * n,
                         "train_clean_acc": [0.5] * n, "mem_corrected": [0.0] * n})


@pytest.mark.parametrize("test,mem,expected", [
    ([0.0, 0.5, 0.95, 0.96, 0.93], [0.0, 0.0, 0.1, 0.6, 0.99], "generalize, then memorize"),
    ([0.0, 0.3, 0.5, 0.92], [0.0, 0.6, 0.95, 1.0], "memorize, then generalize"),
    ([0.0, 0.6, 0.9, 0.95], [0.0, 0.2, 0.97, 0.99], "generalize, then memorize"),  # overlapping rises
    ([0.0, 0.5, 0.95], [0.0, 0.0, 0.2], "generalize only"),
    ([0.0, 0.02, 0.03], [0.0, 0.5, 0.99], "memorize only"),
    ([0.0, 0.02, 0.03], [0.0, 0.1, 0.2], "neither"),
])
def test_regime(test, mem, expected):
    assert regimes.regime(curves(test, mem)) == expected


def test_regime_threshold_edges():
    # reaching a threshold exactly counts; rising through HALFWAY at the same evaluation is not "first"
    m = curves([0.0, regimes.HALFWAY, regimes.COMPOSED], [0.0, regimes.HALFWAY - 0.01, regimes.MEMORIZED])
    assert regimes.regime(m) == "generalize, then memorize"
    m = curves([0.0, regimes.HALFWAY, regimes.COMPOSED], [0.0, regimes.HALFWAY, regimes.MEMORIZED])
    assert regimes.regime(m) == "memorize, then generalize"
    assert regimes.regime(curves([0.0, regimes.COMPOSED - 0.01], [0.0, regimes.MEMORIZED])) == "memorize only"


@pytest.mark.parametrize("test,mem,expected", [
    # each threshold reached, but at different evaluations: the analysed (last) model lost its test accuracy
    ([0.0, 0.95, 0.88], [0.0, 0.2, 0.99], "memorize only"),
    # ... or forgot its noise
    ([0.0, 0.3, 0.95], [0.0, 0.95, 0.85], "generalize only"),
    ([0.0, 0.95, 0.85], [0.0, 0.95, 0.85], "neither"),
    # both at the last evaluation: the order over the run, as `regime` reads it
    ([0.0, 0.6, 0.95, 0.96], [0.0, 0.1, 0.5, 0.99], "generalize, then memorize"),
    ([0.0, 0.3, 0.92], [0.0, 0.95, 1.0], "memorize, then generalize"),
])
def test_analysed_regime_is_that_of_the_last_evaluation(test, mem, expected):
    m = curves(test, mem)
    assert regimes.analysed_regime(m) == expected
    assert regimes.in_regime(m) == (expected in regimes.REGIMES[:2])
    last = m.iloc[-1]
    said = regimes.analysed_model(m)
    assert said.startswith(f"step {int(last['step'])}: test accuracy {tables.cell(last['test_acc'], share=True)}, "
                           f"Mem-Noisy {tables.cell(last['mem_noisy'], share=True)}, ")
    assert said.endswith(f"{'in regime' if regimes.in_regime(m) else 'out of regime'} ({expected})")


def test_analysed_regime_thresholds_are_inclusive():
    assert regimes.in_regime(curves([0.0, regimes.COMPOSED], [0.0, regimes.MEMORIZED]))
    assert not regimes.in_regime(curves([0.0, regimes.COMPOSED], [0.0, regimes.MEMORIZED - 1e-9]))
    assert not regimes.in_regime(curves([0.0, regimes.COMPOSED - 1e-9], [0.0, regimes.MEMORIZED]))


@pytest.mark.parametrize("repeats", [1, 3])
def test_training_rows_repeat_facts(repeats):
    config = rote.make_config("thr", "tiny", fact_repeats=repeats)
    frame = load_dataset(config)
    rows = training_rows(frame, config)
    train = frame[frame["split"] == "train"]
    n_facts = (train["kind"] == "fact").sum()
    assert len(rows) == len(train) + (repeats - 1) * n_facts
    assert rows["id"].value_counts()[train[train["kind"] == "fact"]["id"]].eq(repeats).all()
    assert rows["id"].value_counts()[train[train["kind"] == "two_hop"]["id"]].eq(1).all()
    assert (rows.iloc[: len(train)]["id"].to_numpy() == train["id"].to_numpy()).all()  # the epoch starts as before


def test_fact_repeats_is_validated_and_does_not_change_the_data():
    with pytest.raises(ValueError, match="fact_repeats must be > 0"):
        rote.make_config("thr", "tiny", fact_repeats=0)
    a, b = rote.make_config("thr", "tiny"), rote.make_config("thr", "tiny", fact_repeats=4)
    assert rote.config_hash(a) != rote.config_hash(b)
    assert rote.runs.data.dataset_dir(a) == rote.runs.data.dataset_dir(b)


def test_record_and_redraw(tmp_path):
    config = rote.make_config("thr", "tiny", fact_repeats=2)
    m = curves([0.0, 0.95, 0.94], [0.0, 0.2, 0.995])
    row = regimes.record(config, m, note="synthetic", root=tmp_path, threads=1)
    assert row["regime"] == "generalize, then memorize" and row["run"] == rote.config_hash(config)
    assert row["min_to_test_95"] == 1.0 and row["mem_noisy_at_test_95"] == 0.2
    assert row["min_to_mem_99"] == 2.0 and row["test_at_mem_99"] == 0.94
    assert row["mem_noisy_at_test_50"] == 0.2 and row["mem_noisy_at_test_90"] == 0.2
    frame = load_dataset(config)
    per_fact = ((frame["kind"] == "two_hop") & (frame["split"] == "train")).sum() / (frame["kind"] == "fact").sum()
    assert row["two_hop_per_fact"] == pytest.approx(per_fact, abs=0.005)
    regimes.record(config, m, note="again", root=tmp_path, threads=1)  # the same run replaces its row
    other = rote.make_config("thr", "tiny", seed=1)
    regimes.record(other, curves([0.0, 0.01], [0.0, 0.0]), root=tmp_path, threads=1)
    regimes.record(config, m, note="two threads", root=tmp_path, threads=2)  # another path: another record
    runs, all_curves = regimes.runs_map(tmp_path)
    assert list(runs["run"]) == [rote.config_hash(config), rote.config_hash(other), f"{rote.config_hash(config)}-2threads"]
    assert runs["note"].iloc[0] == "again" and len(all_curves) == 8
    assert regimes.recorded_config(runs["run"].iloc[2], tmp_path) == config
    assert regimes.recorded_config(row["run"], tmp_path) == config
    text = regimes.summary(runs, config)
    assert "3 runs: 2 generalize, then memorize, 1 neither" in text and "not trained here" in text
    # This build's run memorized first although the map's recorded run of the same config composed
    # first: the summary reads this build's metrics and says that the two differ.
    rote.store.write_csv(rote.run_dir(config) / "metrics.csv", curves([0.0, 0.3, 0.95], [0.0, 0.6, 0.995]))
    text = regimes.summary(runs, config)
    assert "This build's THR run" in text and "'memorize, then generalize'" in text and "after 2.0 min" in text
    assert "recorded run of the same set-up was 'generalize, then memorize'" in text
    charts = pytest.importorskip("rote.book.charts")
    assert charts.regime_map_chart(runs).to_dict() and charts.regime_curves_chart(runs, all_curves).to_dict()


def test_curves_are_thinned_to_fit_the_page():
    charts = pytest.importorskip("rote.book.charts")
    long = pd.DataFrame({"run": ["a"] * 1000 + ["b"] * 5, "step": list(range(1000)) + list(range(5))})
    thin = charts.every_nth_evaluation(long, 10)
    a = thin[thin["run"] == "a"]["step"]
    assert len(a) == 10 and a.iloc[0] == 0 and a.iloc[-1] == 999 and a.is_monotonic_increasing
    assert list(thin[thin["run"] == "b"]["step"]) == [0, 1, 2, 3, 4]  # short runs whole
    runs, curves = regimes.runs_map()  # the committed map: more evaluations than altair embeds
    assert len(curves) * 3 > 5_000 and charts.regime_curves_chart(runs, curves).to_dict()


@pytest.mark.parametrize("test,mem,expected", [
    ([0.0, 0.91, 0.95], [0.0, 0.25, 0.995], True),   # composed at 25% Mem-Noisy, then fitted the noise
    ([0.0, 0.91, 0.95], [0.0, 0.26, 0.995], False),  # the noise was already a quarter fitted
    ([0.0, 0.91, 0.89], [0.0, 0.10, 0.995], False),  # fitting the noise cost the held-out accuracy
    ([0.0, 0.91, 0.95], [0.0, 0.10, 0.98], False),   # the noise was never fitted
])
def test_composes_first_with_margin(test, mem, expected):
    assert regimes.composes_first_with_margin(curves(test, mem)) is expected


@pytest.mark.parametrize("composed,there,fitted,held_out,expected", [
    (float("nan"), float("nan"), float("nan"), float("nan"), "held-out accuracy never reached 90%"),
    (200, 0.4, 300, 0.95, "composed with 40.0% of the noise fitted"),
    (200, 0.1, float("nan"), float("nan"), "Mem-Noisy never reached 99%"),
    (200, 0.1, 300, 0.89, "held-out accuracy 89.0% where Mem-Noisy reached 99%"),
])
def test_why_a_run_is_without_margin(composed, there, fitted, held_out, expected):
    row = pd.Series({"composed_step": composed, "mem_noisy_there": there, "fitted_step": fitted,
                     "held_out_accuracy_there": held_out})
    assert regimes.why_without_margin(row) == expected


def test_robustness_check_reads_every_seed_and_thread_count_of_one_set_up(tmp_path):
    config = rote.make_config("thr", "tiny", schedule="wsd", decay_steps=20, decay_when_train_acc=0.5)
    margin = curves([0.0, 0.5, 0.92, 0.95], [0.0, 0.02, 0.1, 0.995])  # train-clean 0.5 from step 0
    late = curves([0.0, 0.5, 0.92, 0.95], [0.0, 0.02, 0.4, 0.995])  # composed with 40% fitted
    regimes.record(config, margin, root=tmp_path, threads=1)
    regimes.record(config, late, root=tmp_path, threads=2)
    regimes.record(dataclasses.replace(config, seed=1), margin, root=tmp_path, threads=1)
    regimes.record(dataclasses.replace(config, lr=1e-2), late, root=tmp_path, threads=1)  # another set-up
    runs, all_curves = regimes.runs_map(tmp_path)
    check = regimes.robustness_check(runs, all_curves, dataclasses.replace(config, seed=5), tmp_path)
    assert list(zip(check["seed"], check["threads"], check["with_margin"])) == [(0, 1, True), (0, 2, False), (1, 1, True)]
    assert list(check["composed_step"]) == [200, 200, 200] and list(check["mem_noisy_there"]) == [0.1, 0.4, 0.1]
    assert list(check["fitted_step"]) == [300] * 3 and list(check["decay_from"]) == [0] * 3
    assert [c for c in check.columns if tables.is_share(c)] == ["mem_noisy_there", "held_out_accuracy_there"]  # in percent
    text = regimes.robustness_text(check)
    assert text.startswith("Composed first with margin on 2 of 3 runs")
    assert text.endswith("Without margin: seed 0 on 2 threads (composed with 40.0% of the noise fitted).")
    check = regimes.robustness_check(runs, all_curves, rote.make_config("thr", "tiny"), tmp_path)
    assert "not run" in regimes.robustness_text(check)


def test_the_map_table_names_its_counts_and_shows_accuracies_in_percent():
    runs, _ = regimes.runs_map()
    html = tables.html_table(regimes.runs_table(runs))
    for name in ("people", "relations", "layers", "width", "final held out accuracy", "peak held out accuracy"):
        assert f"<th>{name}</th>" in html
    assert "<th>instances" not in html  # not "instances layer"
    row = runs.iloc[0]
    final = tables.cell(row["final_test"], share=True)
    assert final.endswith("%") and f"<td>{final}</td>" in html
    assert "<th>noise rate</th>" in html and f"<td>{tables.cell(row['noise'], share=True)}</td>" in html
