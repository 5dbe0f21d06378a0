"""rote.grid.sweep on Dask and the run-directory safety it needs: the lock, a SIGKILLed trainer or worker,
a corrupt or hostile state.pt, bad grid input; and rote.grid.scorecard's counting on known records."""
from __future__ import annotations

import json
import os
import pickle
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

import rote
from rote.book import tables
from rote.claims import Claim
from rote.config import ConfigError
from rote.grid import scorecard, sweep
from rote.observations import OBSERVATIONS
from rote.runs.train import RunError, run_dir
from rote.store import locked

PYTHON = sys.executable
# A tiny run long enough to be caught in the middle (a few seconds on one thread).
LONG = {"max_steps": 400, "eval_every": 20, "checkpoint_every": 200}


def _weights(run: Path) -> dict:
    return load_file(str(run / "final" / "model.safetensors"))


def _same_weights(a: Path, b: Path) -> None:
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    for name in wa:
        assert torch.equal(wa[name], wb[name]), name


def _trainer(home: Path, **overrides) -> subprocess.Popen:
    """A separate process training the tiny FDA config with `overrides` in `home`."""
    code = ("import torch, sys; torch.set_num_threads(1); import rote; "
            f"rote.train(rote.make_config('fda', 'tiny', **{overrides!r}), progress=False); print('trained')")
    return subprocess.Popen([PYTHON, "-c", code], env={**os.environ, "ROTE_HOME": str(home)},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_step(run: Path, proc, timeout: float = 120) -> int:
    """Poll until `run` has a saved state past step 0 and no final model; return that step."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        metrics = run / "metrics.csv"
        if (run / "state.pt").exists() and metrics.exists() and not (run / "final").exists():
            steps = pd.read_csv(metrics)["step"]
            if steps.iloc[-1] > 0:
                return int(steps.iloc[-1])
        assert proc is None or proc.poll() is None, "the trainer ended before it could be interrupted"
        time.sleep(0.02)
    raise AssertionError("the run never reached a saved step")


# ---- the run directory --------------------------------------------------------------------------------------

def test_sigkilled_training_resumes_to_the_same_final_weights(tmp_path):
    config = rote.make_config("fda", "tiny", **LONG)
    os.environ["ROTE_HOME"] = str(tmp_path / "whole")
    whole = rote.train(config, progress=False)

    killed_home = tmp_path / "killed"
    proc = _trainer(killed_home, **LONG)
    run = killed_home / "runs" / whole.name
    step = _wait_for_step(run, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (run / "final").exists() and step < config.max_steps
    os.environ["ROTE_HOME"] = str(killed_home)
    assert rote.train(config, progress=False) == run
    _same_weights(whole, run)
    steps = pd.read_csv(run / "metrics.csv")["step"]
    assert list(steps) == list(range(0, config.max_steps + 1, config.eval_every))  # no evaluation twice


def test_a_trainer_waits_while_another_process_holds_the_run(tmp_path):
    home = tmp_path / "shared"
    run = home / "runs" / run_dir(rote.make_config("fda", "tiny", **LONG)).name
    with locked(run):  # this test stands in for a trainer in the middle of the run
        second = _trainer(home, **LONG)
        said = ""
        while "waiting for the process that holds" not in said:  # blocks until the trainer reports the lock
            line = second.stderr.readline()
            assert line, f"the trainer ended without waiting: {said}"
            said += line
        time.sleep(0.5)
        assert second.poll() is None and not (run / "metrics.csv").exists()  # it waits, it does not train
    out, err = second.communicate(timeout=300)
    assert second.returncode == 0, err
    assert (run / "final" / "model.safetensors").exists()


def test_two_processes_never_train_the_same_run_at_once(tmp_path):
    home = tmp_path / "shared"
    first = _trainer(home, **LONG)
    run = home / "runs" / run_dir(rote.make_config("fda", "tiny", **LONG)).name
    _wait_for_step(run, first)
    second = _trainer(home, **LONG)  # asked for the same config while the first trains it (or just after)
    out2, err2 = second.communicate(timeout=300)
    out1, _ = first.communicate(timeout=300)
    assert first.returncode == 0 and second.returncode == 0, err2
    steps = pd.read_csv(run / "metrics.csv")["step"]
    assert list(steps) == list(range(0, LONG["max_steps"] + 1, LONG["eval_every"]))  # trained once, in order
    assert (run / "final" / "model.safetensors").exists()


def test_run_files_are_readable_by_the_group(tmp_path):
    old = os.umask(0o022)
    try:
        run = rote.train(rote.make_config("fda", "tiny"), progress=False)
    finally:
        os.umask(old)
    for path in [run / "metrics.csv", run / "state.pt", run / "final", run / "final" / "model.safetensors"]:
        assert path.stat().st_mode & 0o040, path  # group-readable, unlike mkstemp's 0600


def test_corrupt_state_gives_one_line_naming_the_run(tmp_path):
    config = rote.make_config("fda", "tiny")
    run = rote.train(config, stop_after=30, progress=False)
    (run / "state.pt").write_bytes(b"not a torch file")
    with pytest.raises(RunError) as err:
        rote.train(config, progress=False)
    message = str(err.value)
    assert "\n" not in message and str(run) in message and "delete" in message and "state.pt" in message
    (run / "state.pt").unlink()  # what the message says to do
    assert rote.train(config, progress=False) == run and (run / "final" / "model.safetensors").exists()


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_resuming_never_unpickles_arbitrary_objects(tmp_path):
    config = rote.make_config("fda", "tiny")
    run = rote.train(config, stop_after=30, progress=False)
    marker = tmp_path / "code-ran"
    with open(run / "state.pt", "wb") as handle:  # a state.pt that runs code when unpickled
        pickle.dump({"model": _Payload(marker), "step": 20}, handle)
    with pytest.raises(RunError):
        rote.train(config, progress=False)
    assert not marker.exists()


# ---- the sweep ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("args,expected", [
    (dict(tasks=["fdx"], noises=[0.05], seeds=[0]), "unknown task 'fdx'; allowed: fda, thr"),
    (dict(tasks=["fda"], noises=[1.5], seeds=[0]), "noise must be in [0, 1), got 1.5"),
    (dict(tasks=["fda"], noises=[], seeds=[0]), "empty grid"),
    (dict(tasks=["fda"], noises=[0.05], seeds=[]), "empty grid"),
    (dict(tasks=["fda"], noises=[0.05], seeds=[0], overrides={"n_layr": 2}), "unknown config field(s) n_layr"),
])
def test_bad_grid_fails_in_one_line(args, expected):
    with pytest.raises(ConfigError) as err:
        sweep.grid(profile="tiny", **args)
    assert expected in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("argv,expected", [
    (["--tasks", "fdx"], "error: unknown task 'fdx'; allowed: fda, thr"),
    (["--noise", "-0.1"], "error: noise must be in [0, 1), got -0.1"),
    (["--seeds"], None),  # argparse: expected at least one argument
    (["--scheduler", "tcp://127.0.0.1:9"], "error: cannot reach the Dask scheduler at tcp://127.0.0.1:9"),
])
def test_sweep_command_refuses_bad_input_before_any_work(argv, expected, tmp_path):
    records = tmp_path / "records"
    result = subprocess.run([PYTHON, "-m", "rote.grid.sweep", "--profile", "tiny", "--records", str(records), *argv],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    if expected:
        assert last.startswith(expected), result.stderr
        assert "Traceback" not in result.stderr
    assert not records.exists() and not (Path(os.environ["ROTE_HOME"]) / "runs").exists()


def test_slurm_job_script(tmp_path):
    cluster = sweep.slurm_cluster(jobs=0, threads=2, memory="6GB", walltime="01:00:00",
                                  options=["--partition=cpu"], rote_home=str(tmp_path / "shared"))
    try:
        script = cluster.job_script()
    finally:
        cluster.close()
    assert "#SBATCH --partition=cpu" in script and "#SBATCH -t 01:00:00" in script
    assert "#SBATCH --cpus-per-task=2" in script
    assert f"export ROTE_HOME={tmp_path / 'shared'}" in script and "export OMP_NUM_THREADS=2" in script
    assert "--nthreads 1" in script  # one cell at a time per job
    prologue = next(line for line in script.splitlines() if "PRE_SPAWN_ENVIRON" in line)
    env = {**os.environ, **dict([shlex.split(prologue.removeprefix("export "))[0].split("=", 1)])}
    spawned = subprocess.run([sys.executable, "-c", "from distributed.nanny import _get_env_variables as e; "
                              "print(sorted(e('distributed.nanny.pre-spawn-environ')))"],
                             env=env, capture_output=True, text=True, check=True).stdout
    assert "OMP_NUM_THREADS" in spawned and "MALLOC_TRIM_THRESHOLD_" not in spawned  # the job's workers keep glibc's malloc


def test_local_workers_keep_glibcs_malloc_settings(monkeypatch):
    """Dask's default MALLOC_TRIM_THRESHOLD_=65536 slows a one-thread training step 1.7x."""
    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_", raising=False)
    client = sweep.connect(workers=1)
    try:
        assert client.run(lambda: os.environ.get("MALLOC_TRIM_THRESHOLD_")) == {w: None for w in client.run(lambda: 0)}
    finally:
        client.close()
        client.cluster.close()


def test_finished_and_started_runs_go_first_then_the_grid_order():
    cells = sweep.grid(["fda"], [0.02, 0.05, 0.1, 0.2], [0], "tiny")
    rote.train(cells[2].config, progress=False)  # finished
    rote.train(cells[3].config, stop_after=30, progress=False)  # saved at step 20
    ranked = sorted(cells, key=sweep.priorities(cells).get, reverse=True)
    assert ranked == [cells[2], cells[3], cells[0], cells[1]]


def _claims(records: Path, cell) -> str:
    return (sweep.cell_dir(cell, records) / "claims.json").read_text()


def test_grid_on_a_local_cluster_with_a_killed_worker_matches_cells_run_one_by_one(tmp_path):
    from distributed import Client, LocalCluster

    cells = sweep.grid(["fda", "thr"], [0.05, 0.1], [0], "tiny", LONG)
    serial = tmp_path / "serial"
    for cell in cells:
        sweep.run_cell(cell, str(tmp_path / "home-serial"), str(serial))

    home, records = tmp_path / "home-dask", tmp_path / "dask"
    os.environ["ROTE_HOME"] = str(home)
    with Client(LocalCluster(n_workers=2, threads_per_worker=1, processes=True, memory_limit=0,
                             dashboard_address=":0")) as client:
        result = {}
        runner = threading.Thread(target=lambda: result.update(
            frame=sweep.sweep(cells, client, records, progress=False)))
        runner.start()
        victim = home / "runs" / cells[0].name  # training on a worker: kill that worker
        _wait_for_step(victim, None)
        for address, keys in client.processing().items():
            if any(cells[0].name in str(k) for k in keys):
                pid = client.run(os.getpid, workers=[address])[address]
                os.kill(pid, signal.SIGKILL)
                break
        else:
            pytest.fail("no worker was training the first cell")
        runner.join(timeout=600)
    frame = result["frame"]
    assert sorted(frame["config_hash"]) == sorted(rote.config_hash(c.config) for c in cells)
    for cell in cells:
        assert _claims(records, cell) == _claims(serial, cell), cell
        _same_weights(tmp_path / "home-serial" / "runs" / cell.name, home / "runs" / cell.name)
    # a second sweep skips every cell with records
    again = sweep.sweep(cells, None, records, progress=False)
    assert list(again["finished"]) == list(frame["finished"])


def _drop_observation(records: Path, cell, number: int) -> None:
    path = sweep.cell_dir(cell, records) / "claims.json"
    kept = [r for r in json.loads(path.read_text()) if r["observation"] != number]
    path.write_text(json.dumps(kept))


def test_a_cell_without_a_newer_observation_is_completed_from_the_same_run(tmp_path):
    """Records made before an observation joined the registry: the sweep trains the run again, checks
    its evaluation table against the recorded one and adds only the missing analysis."""
    cell = sweep.grid(["thr"], [0.1], [0], "tiny")[0]
    whole, records = tmp_path / "whole", tmp_path / "records"
    sweep.run_cell(cell, str(tmp_path / "home-a"), str(whole))
    sweep.run_cell(cell, str(tmp_path / "home-b"), str(records))
    newest = max(OBSERVATIONS)
    _drop_observation(records, cell, newest)
    assert sweep.missing_observations(cell, records) == [newest] and sweep.is_done(cell, records)
    before = json.loads((sweep.cell_dir(cell, records) / "cell.json").read_text())
    config = sweep.cell_dir(cell, records) / "config.json"
    config.write_text(config.read_text().replace(' "kernels": "deterministic",\n', ""))  # as recorded before that field
    older = config.read_text()
    sweep.sweep([cell], None, records, progress=False)  # a fresh ROTE_HOME: the run is trained again
    assert config.read_text() == older  # the recorded files are kept byte for byte
    assert sweep.missing_observations(cell, records) == []
    assert _claims(records, cell) == _claims(whole, cell)  # the same records as a whole run's, in the same order
    assert "kernels" not in older
    after = json.loads((sweep.cell_dir(cell, records) / "cell.json").read_text())
    assert after["finished"] == before["finished"] and after["completed"]["observations"] == [newest]
    # a run that is not the recorded one is refused, and the records stay as they were
    _drop_observation(records, cell, newest)
    table = sweep.cell_dir(cell, records) / "metrics.csv"
    metrics = pd.read_csv(table)
    metrics.loc[len(metrics) - 1, "test_acc"] += 0.01
    metrics.to_csv(table, index=False)
    kept = _claims(records, cell)
    with pytest.raises(sweep.SweepError, match=f"differs from the recorded one .first at step {metrics['step'].iloc[-1]}."):
        sweep.run_cell(cell, str(tmp_path / "home-b"), str(records))
    assert _claims(records, cell) == kept


def test_redo_analyses_an_observation_again_in_place_of_its_records(tmp_path):
    """After a change to an observation's rules: `redo` replaces that observation's records (here
    planted as an older rule's) with the current code's, from the same run, and keeps the others."""
    cell = sweep.grid(["fda"], [0.1], [0], "tiny")[0]
    whole, records = tmp_path / "whole", tmp_path / "records"
    sweep.run_cell(cell, str(tmp_path / "home"), str(whole))
    sweep.run_cell(cell, str(tmp_path / "home"), str(records))
    path = sweep.cell_dir(cell, records) / "claims.json"
    older = json.loads(path.read_text())
    for r in older:
        if r["observation"] == 0:
            r.update(control="an older rule's control", verdict="does not hold")
    path.write_text(json.dumps(older))
    assert sweep.missing_observations(cell, records) == [] and sweep.missing_observations(cell, records, [0]) == [0]
    sweep.sweep([cell], None, records, progress=False)  # nothing missing: nothing run, the planted record stays
    assert [r["control"] for r in json.loads(_claims(records, cell)) if r["observation"] == 0] == ["an older rule's control"]
    sweep.sweep([cell], None, records, progress=False, redo=[0])
    assert _claims(records, cell) == _claims(whole, cell)  # observation 0 as the current code has it, in its place
    info = json.loads((sweep.cell_dir(cell, records) / "cell.json").read_text())
    assert info["completed"]["observations"] == [0]
    with pytest.raises(SystemExit, match="--redo: no observation 9; allowed: 0, 1, 2, 3, 4, 5"):
        sweep.main(["--profile", "tiny", "--tasks", "fda", "--records", str(records), "--redo", "9"])


# ---- the scorecard ---------------------------------------------------------------------------------------------

def _claim(observation: int, task: str, verdict: str, value: float = 0.5) -> Claim:
    return Claim(observation, task, "a claim", "share of instances", value, value - 0.1, value + 0.1, "control",
                 0.1, 0.05, 0.15, value - 0.1, value - 0.2, value, "rule", verdict, 10)


def _save(cell, records: Path, verdict: str, metrics: str) -> None:
    """Records of `cell` as a sweep saves them: every observation's claim with `verdict`, the metrics table `metrics`."""
    (records / "m.csv").parent.mkdir(parents=True, exist_ok=True)
    (records / "m.csv").write_text(metrics)
    info = {"config_hash": rote.config_hash(cell.config), "train_minutes": 1.0, "analysis_seconds": {"0": 1.0},
            "device": "1 CPU thread(s)"}
    sweep.save_cell(cell, records, info, cell.config, [_claim(o, cell.task, verdict) for o in OBSERVATIONS], records / "m.csv")


def test_scorecard_counts_verdicts_of_saved_records(tmp_path):
    cells = scorecard.default_cells("tiny", ("fda",), (0.05, 0.1), [0, 1, 2])
    verdicts = {(0.05, 0): "holds", (0.05, 1): "holds", (0.05, 2): "holds in part", (0.1, 0): "does not hold",
                (0.1, 1): "holds"}
    in_regime = "step,seconds,test_acc,mem_noisy\n0,0,0.1,0.0\n100,1,0.95,0.2\n200,2,0.96,0.99\n"
    neither = "step,seconds,test_acc,mem_noisy\n0,0,0.1,0.0\n100,1,0.12,0.1\n200,2,0.15,0.16\n"
    # test accuracy reached 90% at step 100 and Mem-Noisy at step 200, where test accuracy is down to 88%
    apart = "step,seconds,test_acc,mem_noisy\n0,0,0.1,0.0\n100,1,0.95,0.2\n200,2,0.88,0.99\n"
    metrics = {(0.1, 1): neither, (0.05, 2): apart}
    for cell in cells:
        if (cell.noise, cell.seed) in verdicts:
            _save(cell, tmp_path, verdicts[cell.noise, cell.seed], metrics.get((cell.noise, cell.seed), in_regime))
    card = scorecard.scorecard(cells, tmp_path)
    table = scorecard.verdict_table(card.verdicts).set_index("observation")
    # the analysed model of (5%, seed 2) no longer generalizes, that of (10%, seed 1) did neither:
    # their verdicts are shown, not counted
    assert table.loc[0, "noise 5%"] == "holds in 2 of 2 runs; out of regime in 1"
    assert table.loc[0, "noise 10%"] == "holds in 0 of 1 runs (does not hold 1); out of regime in 1; not run yet in 1"
    assert table.loc[0, "all runs"] == "holds in 2 of 3 runs (does not hold 1); out of regime in 2; not run yet in 1"
    frame = scorecard.heatmap_frame(card.verdicts, card.claims).set_index(["observation", "noise"])
    assert frame.loc[("0", "5%"), "summary"] == "holds in every run"
    assert frame.loc[("0", "10%"), "summary"] == "holds in no run"
    assert "seed 2 out of regime (memorize only; its claims: holds in part)" in frame.loc[("0", "5%"), "runs"]
    assert "seed 1 out of regime (neither; its claims: holds)" in frame.loc[("0", "10%"), "runs"]
    # each claim counted on its own, over the runs in regime only
    per_claim = scorecard.claim_table(card.verdicts, card.claims, [0])
    assert per_claim.to_dict("records") == [{"observation": 0, "task": "FDA", "claim": "a claim",
                                             "noise 5%": "holds in 2 of 2 runs",
                                             "noise 10%": "holds in 0 of 1 runs (does not hold 1)",
                                             "all runs": "holds in 2 of 3 runs (does not hold 1)"}]
    assert len(scorecard.claim_table(card.verdicts, card.claims)) == len(OBSERVATIONS)
    stats = scorecard.statistic_table(card.claims, card.verdicts).iloc[0]
    assert "seed 2 (out of regime): 50.0% [40.0%, 60.0%] vs 10.0% [5.0%, 15.0%]" in stats["per seed: value [95% CI] vs control"]
    assert stats["difference: mean [min, max] over those seeds"] == "40.0% [40.0%, 40.0%]"
    over = stats["difference over the seeds in regime: mean [95% CI, seeds then instances]"]
    lo, hi = (float(x) / 100 for x in re.fullmatch(r"40\.0% \[(.*)%, (.*)%\]", over).groups())
    assert 0.3 < lo < 0.39 and 0.41 < hi < 0.5  # two seeds of 40% [30%, 50%]: narrower than one, not a point
    assert stats["verdicts"] == "holds in 2 of 2 runs"
    text = scorecard.robustness(card.verdicts)
    assert "Holding in most runs but not all: Observation 0 in FDA (holds in 2 of 3 runs" in text
    assert text.endswith("out of the paper's regime): FDA 5% seed 2 (memorize only); FDA 10% seed 1 (neither).")
    assert len(card.timings) == 5
    assert list(card.timings["regime"]) == ["generalize, then memorize"] * 2 + ["memorize only", "generalize, then memorize",
                                                                                "neither"]
    assert list(card.timings["analysed step"]) == [200] * 5
    assert card.timings["test accuracy"].iloc[2] == pytest.approx(0.88)
    assert card.timings["Mem-Noisy"].iloc[-1] == pytest.approx(0.16)
    shown = tables.html_table(card.timings)  # shares in percent, as in every table
    assert "<th>test accuracy</th>" in shown and "<td>88.0%</td>" in shown and "<td>16.0%</td>" in shown


def test_scorecard_reads_the_committed_records_then_those_of_your_sweeps():
    committed = scorecard.default_cells()
    assert all(sweep.is_done(c) for c in committed)  # the package carries the records of the committed grid
    mine = scorecard.default_cells("tiny", ("fda",), (0.07,), [0])
    _save(mine[0], sweep.default_records(), "holds", "step,seconds,test_acc,mem_noisy\n0,0,0.1,0.0\n100,1,0.95,0.99\n")
    card = scorecard.scorecard(committed + mine)
    # "not run yet" exactly where a committed cell lacks an observation's records (none once the grid is complete)
    missing = {(c.task, c.noise, c.seed, n) for c in committed for n in sweep.missing_observations(c)}
    not_run = card.verdicts[card.verdicts["claims_verdict"] == "not run yet"]
    assert set(zip(not_run["task"], not_run["noise"], not_run["seed"], not_run["observation"])) == missing
    assert len(card.timings) == len(committed) + 1
    assert set(card.verdicts[card.verdicts["noise"] == 0.07]["claims_verdict"]) == {"holds"}


def test_scorecard_parameters_are_checked():
    base = dict(task="both", profile="tiny", noises=[0.05], seeds=[0], overrides={}, run_sweep=False)
    assert len(scorecard.check_parameters(base)) == 2
    with pytest.raises(ConfigError, match="unknown parameter.*noise; allowed: task, profile, noises"):
        scorecard.check_parameters({**base, "noise": 0.1})
    with pytest.raises(ConfigError, match="run_sweep must be True or False"):
        scorecard.check_parameters({**base, "run_sweep": "yes"})
