"""The published reference runs are runs of today's profiles with every file a chapter reads,
and `rote.runs.reference.install` makes them finished runs that `get_or_train` loads; where the
package has no checkout, they are downloaded (here from a local URL) and checked against the
packaged manifest first."""
from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest

import rote
from rote.runs import reference
from rote.runs import train as train_module
from rote.runs.train import is_finished
from rote.store import REPO_ROOT


def test_reference_runs_are_the_current_profiles_with_every_file(monkeypatch):
    monkeypatch.setenv("ROTE_ALLOW_CPU", "1")  # a paper run's config is made here without a GPU
    runs = reference.reference_runs()
    assert {"fda-cpu", "thr-cpu"} <= {p.name for p in runs}
    for path, config in runs.items():
        task, _, profile = path.name.partition("-")  # <task>-<profile>, as `make paper` publishes them
        assert config == rote.make_config(task, profile), f"{path.name} is not the current {profile} profile"
        for name in ("final/model.safetensors", "final/tokenizer.json", "metrics.csv", "noisy_predictions.csv"):
            assert (path / name).exists(), f"{path.name} lacks {name}"
        metrics = pd.read_csv(path / "metrics.csv")
        predictions = pd.read_csv(path / "noisy_predictions.csv")
        assert sorted(predictions["step"].unique()) == sorted(metrics["step"])


def test_install_makes_finished_runs_once(rote_home):
    first = reference.install()
    assert all(is_finished(c) for c in reference.reference_runs().values())
    stamp = [(p / "final" / "model.safetensors").stat().st_mtime_ns for p in first]
    assert reference.install() == first
    assert [(p / "final" / "model.safetensors").stat().st_mtime_ns for p in first] == stamp
    model, tokenizer = rote.get_or_train(rote.make_config("fda", "cpu"))
    assert model.config.n_layer == rote.make_config("fda", "cpu").n_layer


def test_the_packaged_manifest_is_that_of_data_reference():
    assert reference.packaged() == reference.manifest(), "run: python -m rote.runs.reference --manifest"
    assert sorted(reference.packaged()["runs"]) == sorted(p.name for p in reference.reference_runs())


def _no_training(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("trained")
    monkeypatch.setattr(train_module, "_train", refuse)


def test_a_reference_run_is_downloaded_checked_and_loaded_instead_of_trained(serve, monkeypatch, capsys):
    url, requested = serve(REPO_ROOT)
    monkeypatch.setenv(reference.URL_VARIABLE, url)
    _no_training(monkeypatch)
    config = rote.make_config("thr", "cpu")
    model, _ = rote.get_or_train(config, device="cpu", progress=False)
    assert model.config.n_layer == config.n_layer
    assert rote.metrics(config).equals(pd.read_csv(reference.REFERENCE_DIR / "thr-cpu" / "metrics.csv"))
    files = reference.packaged()["runs"]["thr-cpu"]["files"]
    assert sorted(requested) == sorted(f"/data/reference/thr-cpu/{name}" for name in files)
    megabytes = sum((reference.REFERENCE_DIR / "thr-cpu" / name).stat().st_size for name in files) / 1e6
    message = f"installing the reference run thr-cpu ({megabytes:.1f} MB) from {url}/data/reference/thr-cpu"
    assert message in capsys.readouterr().err


def test_a_corrupt_download_installs_nothing_and_training_says_so(serve, monkeypatch, tmp_path, capsys):
    served = tmp_path / "served" / "data" / "reference" / "thr-cpu"
    shutil.copytree(reference.REFERENCE_DIR / "thr-cpu", served)
    weights = served / "final" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    url, _ = serve(tmp_path / "served")
    monkeypatch.setenv(reference.URL_VARIABLE, url)
    config = rote.make_config("thr", "cpu")
    with pytest.raises(reference.ReferenceRunError) as err:
        reference.install_run("thr-cpu")
    message = str(err.value)
    assert f"{url}/data/reference/thr-cpu/final/model.safetensors does not match the reference manifest" in message
    assert message.endswith("nothing installed") and "\n" not in message
    assert not is_finished(config) and not (rote.run_dir(config) / "final").exists()
    assert not (rote.run_dir(config) / "config.json").exists()

    # the chapters' path: one line, then training (stopped here at once)
    _no_training(monkeypatch)
    with pytest.raises(AssertionError, match="trained"):
        rote.train(config, device="cpu", progress=False)
    assert capsys.readouterr().err.strip().endswith("changed or corrupt; nothing installed; training instead")


def test_an_unreachable_url_is_one_line(monkeypatch):
    monkeypatch.setenv(reference.URL_VARIABLE, "http://127.0.0.1:9")  # the discard port: nothing listens
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    with pytest.raises(reference.ReferenceRunError, match=r"^cannot fetch http://127.0.0.1:9/data/reference/fda-cpu/"
                                                           r"\S+ \(.*\); nothing installed$"):
        reference.install_run("fda-cpu")
    assert not is_finished(rote.make_config("fda", "cpu"))


class _Installed:
    version = "1.2.3"

    def __init__(self, origin: dict):
        self.origin = origin

    def read_text(self, name):
        return json.dumps(self.origin) if name == "direct_url.json" else None


def test_the_download_url_is_the_repository_at_the_installed_commit_or_version(monkeypatch):
    monkeypatch.delenv(reference.URL_VARIABLE, raising=False)
    repo = reference.packaged()["repository"]
    raw = repo.replace("https://github.com/", "https://raw.githubusercontent.com/")
    commit = "0123456789abcdef0123456789abcdef01234567"
    for origin, ref in [({"url": f"{repo}.git", "vcs_info": {"vcs": "git", "commit_id": commit}}, commit),
                        ({"url": "https://example.org/fork", "vcs_info": {"vcs": "git", "commit_id": commit}}, "v1.2.3"),
                        ({"url": "file:///tmp/rote-1.2.3.whl", "archive_info": {}}, "v1.2.3")]:
        monkeypatch.setattr(reference.metadata, "distribution", lambda name, origin=origin: _Installed(origin))
        assert reference.base_url() == f"{raw}/{ref}"
    monkeypatch.setenv(reference.URL_VARIABLE, "http://127.0.0.1:8000/copy/")
    assert reference.base_url() == "http://127.0.0.1:8000/copy"
