"""The files other tools read agree with pyproject.toml: environment.yml (conda), CITATION.cff and
LICENSE; and `make test` lints with the configuration pyproject.toml holds."""
import re
import tomllib

import yaml

from rote.store import REPO_ROOT

PROJECT = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]


def test_environment_yml_lists_the_dependencies_and_extras_of_pyproject():
    env = yaml.safe_load((REPO_ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    expected = PROJECT["dependencies"] + [r for extra in ("book", "test") for r in PROJECT["optional-dependencies"][extra]]
    assert [r for r in pip if not r.startswith("-e")] == expected
    assert "-e .[book,test]" in pip
    python = next(d for d in env["dependencies"] if isinstance(d, str) and d.startswith("python"))
    assert python == "python" + PROJECT["requires-python"]


def test_citation_and_license_match_the_project():
    citation = yaml.safe_load((REPO_ROOT / "CITATION.cff").read_text())
    assert citation["version"] == PROJECT["version"] and citation["license"] == PROJECT["license"]
    assert "2507.04782" in str(citation["preferred-citation"])
    url = re.search(r"repository:\n  url: (\S+)", (REPO_ROOT / "_config.yml").read_text()).group(1)
    assert citation["repository-code"] == url
    assert (REPO_ROOT / "LICENSE").read_text().startswith(f"{PROJECT['license']} License")


def test_make_test_lints_first():
    makefile = (REPO_ROOT / "Makefile").read_text()
    recipe = makefile.split("\ntest: install\n", 1)[1].split("\n\n", 1)[0]
    assert recipe.splitlines()[0].strip().startswith("$(BIN)/ruff check")
