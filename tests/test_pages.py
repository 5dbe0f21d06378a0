"""What a reader sees of tables and claims: every row and cell whole, no index, readable headers and
numbers; a result box, a chart and a table that say what the claim records say."""
import math
import re

import pandas as pd

from rote.book import tables, verdicts
from rote.claims import Claim


def claim(task="fda", verdict="holds", value=0.7, control=0.2, statistic="share of memorized instances", **kw):
    fields = dict(observation=1, task=task, claim="the correct label outranks the noisy one", statistic=statistic,
                  value=value, lo=value - 0.1, hi=value + 0.1, control="a label-prior digit", control_value=control,
                  control_lo=control - 0.05, control_hi=control + 0.05, difference=value - control,
                  difference_lo=value - control - 0.1, difference_hi=value - control + 0.1,
                  rule="holds when the difference's 95% interval lies above 0", verdict=verdict, n=120)
    return Claim(**{**fields, **kw})


def test_a_table_shows_every_row_and_cell_whole_without_index():
    long = "a claim whose text is much longer than the pandas column width limit of fifty characters, kept whole"
    frame = pd.DataFrame({"share_correct": [0.25] * 100, "mean_rank": [1.23456] * 100, "text": [long] * 100,
                          "n": list(range(100)), "missing": [math.nan] * 100})
    html = tables.html_table(frame)
    assert html.count("<tr>") == 101  # the header and every row
    assert long in html and "..." not in html and "…" not in html
    assert "<th>share correct</th>" in html and "<th>instances</th>" in html and "NaN" not in html and "nan" not in html
    assert "<td>25.0%</td>" in html and "<td>1.235</td>" in html and "<td>–</td>" in html
    assert html.startswith('<details class="rote-fold">') and "100 rows" in html  # long: folded, not cut
    short = tables.html_table(frame.head(3).set_index("n"))
    assert not short.startswith("<details") and "<th>instances</th>" in short  # a named index becomes a column
    assert not re.search(r"<td>\d</td><td>25.0%", tables.html_table(frame.head(3)))  # no row index in front
    assert not re.search(r"<td>\d+</td><td>25.0%", tables.html_table(frame[frame.n > 50]))  # nor row numbers
    labelled = tables.html_table(frame.head(2).set_index(pd.Index(["lr", "seed"])))  # row labels are kept
    assert "<th>index</th>" in labelled and "<td>lr</td><td>25.0%</td>" in labelled
    # a config field may wrap after an underscore, so one long name does not widen its column
    field = tables.html_table(pd.DataFrame({"field": ["two_hop_train_fraction"]}))
    assert "<td>two_<wbr>hop_<wbr>train_<wbr>fraction</td>" in field


def test_a_share_shows_the_decimals_it_carries():
    # accuracies over 2,000 questions are multiples of 0.05% (stored as float32): none is rounded across
    # a threshold, and a share a chapter rounded to three decimals gets no invented digit
    assert [tables.cell(x, share=True) for x in (0.9495000243186951, 0.9574999809265137, 0.957, 1.0, 0.0)] == [
        "94.95%", "95.75%", "95.7%", "100.0%", "0.0%"]
    # in a table, a column of shares has one number of decimals, the most any of its shares carries
    column = tables.html_table(pd.DataFrame({"test_accuracy": [0.993, 0.9905, 1.0], "share_kept": [0.5, 0.25, 0.125]}))
    assert re.findall(r"<td>(.*?)</td>", column) == ["99.30%", "50.0%", "99.05%", "25.0%", "100.00%", "12.5%"]


def test_a_value_and_its_interval_share_one_cell():
    frame = pd.DataFrame({"group": ["noisy", "clean"], "share_kept": [0.25, 0.5], "share_kept_lo": [0.2, 0.4],
                          "share_kept_hi": [0.3, 0.6], "delta_logp": [-1.5, 0.25], "lo": [-2.0, math.nan],
                          "hi": [-1.0, math.nan], "rescue_driving": [0.1, 0.2], "driving_lo": [0.0, 0.1],
                          "driving_hi": [0.2, 0.3], "epochs": [1, 2]})
    html = tables.html_table(frame)
    heads = re.findall(r"<th>(.*?)</th>", html)
    assert heads == ["group", "share kept [95% CI]", "delta log-prob [95% CI]", "rescue driving [95% CI]", "epochs"]
    first, second = (re.findall(r"<td>(.*?)</td>", row) for row in re.findall(r"<tr>(.*?)</tr>", html)[1:])
    assert first == ["noisy", "25.0% [20.0%, 30.0%]", "-1.5 [-2, -1]", "0.1 [0, 0.2]", "1"]
    assert second[2] == "0.25"  # no interval: the value alone


def test_a_difference_of_shares_is_a_number_and_a_column_is_in_one_format():
    assert [tables.is_share(c) for c in ("accuracy", "acc_change", "Mem-Noisy", "mem_noisy_there", "noise_rate",
                                         "share heuristic - share dedicated", "diff", "mean_rank")] == [
        True, False, True, True, True, False, False, False]
    # a share column that also holds a negative number is a contrast: every cell a number, none in percent
    frame = pd.DataFrame({"accuracy": [-0.004, 0.25], "accuracy_lo": [-0.012, 0.2], "accuracy_hi": [0.0, 0.3]})
    assert "%" not in tables.html_table(frame).split("<tbody>")[1]
    assert "<td>25.0% [20.0%, 30.0%]</td>" in tables.html_table(frame.tail(1))


def test_a_count_column_reads_as_instances_and_a_config_field_keeps_its_name():
    assert [tables.header(c) for c in ("n", "n_layer", "share_noisy", "lo")] == [
        "instances", "n layer", "share noisy", "95% CI low"]


def test_a_multiindex_header_reads_as_words():
    frame = pd.DataFrame([[1, 2]], columns=pd.MultiIndex.from_tuples([("units", "tens"), ("matter", "units")]))
    assert "<th>units tens</th>" in tables.html_table(frame)


def test_the_result_box_says_what_the_records_say():
    records = [claim("fda", "holds", 0.7, 0.21), claim("fda", "does not hold", 0.1, 0.2, claim="a second claim"),
               claim("thr", "holds", 0.55, 0.3)]
    box = verdicts.result_box(records, 1, "the correct label is computed, then overridden")._repr_html_()
    fda, thr = box.split("<li>")[1:3]
    assert "FDA" in fda and "holds in part" in fda and "70.0%" in fda and "21.0%" in fda and "1 of 2 tested claims" in fda
    assert "THR" in thr and ">holds<" in thr and "55.0%" in thr and "1 of 1 tested claims" in thr
    assert verdicts.CLAIMS_ANCHOR in box
    untestable = claim("thr", "cannot be tested", math.nan, math.nan, note="no memorized noisy instance")
    assert "no memorized noisy instance" in verdicts.result_box([untestable], 1, "x")._repr_html_()


def test_the_claims_chart_and_table_show_every_claim_whole():
    records = [claim(), claim("thr", "does not hold", 0.1, 0.3, claim="x" * 300, rule="r" * 400)]
    spec = verdicts.claims_chart(records).to_dict()
    data = next(iter(spec["datasets"].values()))
    assert {(d["number"], d["side"]) for d in data} == {(1, "measured"), (1, "control"), (2, "measured"), (2, "control")}
    html = verdicts.claims_table(records)._repr_html_()
    assert "x" * 300 in html and "r" * 400 in html and "..." not in html
    assert html.count("<details>") == 2 and "does not hold" in html
    text = verdicts.sentence(records, 1, "the correct label is computed, then overridden")
    assert "**FDA**" in text and "holds in this run: 1 of 1 tested claims hold" in text
