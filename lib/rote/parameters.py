"""A chapter's parameters: the names its `parameters` cell sets, checked, and the configs they mean.

Every chapter's first code cell after its parameters is `configs = parameters.check(globals(), ...)`;
the book's build checks the same values with the same function before it trains (`rote.book.build`),
and a sweep's cell makes its config with `configs` (`rote.grid.sweep`). Papermill passes a value on
the command line as NAME=VALUE text: `parse` reads it as papermill does.
"""
from __future__ import annotations

import ast
import types

from rote.config import TASKS, Config, ConfigError, check_overrides, make_config

NAMES = ("task", "noise", "seed", "profile", "overrides")  # every chapter's parameters cell


def chapter_tasks(task: str, tasks=TASKS) -> list[str]:
    """The tasks run for a `task` parameter ("fda", "thr" or "both"), among the `tasks` a chapter
    is about (Observation 3: FDA only, so "both" runs FDA)."""
    allowed = (*tasks, "both")
    if task not in allowed:
        raise ConfigError(f"unknown task {task!r}; allowed: {', '.join(allowed)}")
    return list(tasks) if task == "both" else [task]


def check_names(namespace: dict, allowed) -> dict:
    """The parameters (`allowed`) from a chapter's global `namespace`, after a one-line error if the
    namespace holds any other plain value: papermill only warns of an unknown name (`-p nosie 0.1`
    would silently run the default noise). The `overrides` parameter must be a dict."""
    notebook = {"In", "Out", "get_ipython", "exit", "quit", "open"}  # IPython's own globals
    unknown = sorted(k for k, v in namespace.items() if not k.startswith("_") and k not in allowed
                     and k not in notebook and not isinstance(v, types.ModuleType) and not callable(v))
    if unknown:
        raise ConfigError(f"unknown parameter(s) {', '.join(unknown)}; allowed: {', '.join(allowed)}")
    check_overrides(namespace.get("overrides", {}))
    return {k: namespace[k] for k in allowed}


def configs(task: str = "both", noise: float = 0.05, seed: int = 0, profile: str = "cpu",
            overrides: dict | None = None, tasks=TASKS) -> dict[str, Config]:
    """The config of each task a chapter runs, by task, every field checked (`make_config`)."""
    overrides = check_overrides(overrides or {})
    return {t: make_config(t, profile, noise=noise, seed=seed, **overrides) for t in chapter_tasks(task, tasks)}


def check(namespace: dict, tasks=TASKS) -> dict[str, Config]:
    """A chapter's parameters in `namespace`, checked, as the configs it analyses (by task)."""
    return configs(**check_names(namespace, NAMES), tasks=tasks)


def parse(text: str) -> tuple[str, object]:
    """NAME=VALUE as a (name, value) pair, the value a Python literal where it reads as one."""
    name, _, value = text.partition("=")
    try:
        return name, ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return name, value
