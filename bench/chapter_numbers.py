"""Every chapter's numbers on the reference models, written to one folder so that two versions of
the package can be compared file by file (a refactor must leave them byte-identical).

    make reference                                   # the published reference runs, into ROTE_HOME
    python bench/chapter_numbers.py /tmp/numbers-a   # then, on another version of the package:
    python bench/chapter_numbers.py /tmp/numbers-b && diff -r /tmp/numbers-a /tmp/numbers-b

    python bench/chapter_numbers.py /tmp/numbers --profile tiny -o noise=0.1 ... --check bench/golden/tiny  # `make golden`

Writes claims.json (every observation's claim records, both tasks) and the tables each chapter
shows (readout, removal effects and contrasts, heuristic types, Observation 3's summary and rescue
curve, Observation 4's survival and dependence, the circuits' curves and edges), one CSV each, and prints the seconds each
observation's analysis took (one torch thread).
"""
from __future__ import annotations

import argparse
import re
import time
from pathlib import Path

import torch

import rote
from rote import claims, parameters
from rote.observations import (
    OBSERVATIONS,
    circuits,
    heuristics,
    observation0,
    observation1,
    observation2,
    observation3,
    observation4,
)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--profile", default="cpu")
    parser.add_argument("--task", choices=["fda", "thr", "both"], default="both")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("-o", "--override", action="append", default=[], metavar="FIELD=VALUE",
                        help="a rote.Config field for both tasks' configs")
    parser.add_argument("--check", type=Path, metavar="GOLDEN", help="then compare every file with GOLDEN's, byte for byte")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    save = lambda name, frame: frame.to_csv(args.out / f"{name}.csv", index=False)  # noqa: E731
    records = []
    for task in parameters.chapter_tasks(args.task):
        config, seconds = rote.make_config(task, args.profile, **dict(map(parameters.parse, args.override))), {}

        def analyse(number):
            """Measure, make the claims and time both, as a chapter does."""
            observation, t = OBSERVATIONS[number], time.perf_counter()
            result = observation.measure(config, progress=False)
            records.extend(claims.record(observation.claims(result), config, number))
            seconds[number] = time.perf_counter() - t
            return result
        r0 = analyse(0)
        # without its minutes: a wall-clock time is not a number of the chapter's analysis
        (args.out / f"{task}_run_summary.txt").write_text(re.sub(r" \([\d.]+ min\)", "", observation0.run_summary(r0)))
        r1 = analyse(1)
        save(f"{task}_readout", observation1.readout_table(r1))
        save(f"{task}_over_training", observation1.readout_over_training(config, r1.memorized))
        r2 = analyse(2)
        save(f"{task}_effects", observation2.effects_table(r2))
        save(f"{task}_contrasts", observation2.contrasts_table(r2))
        save(f"{task}_removal_rows", r2.effects)
        if task in OBSERVATIONS[3].tasks:
            r3 = analyse(3)
            save("fda_types", heuristics.type_counts(r3.heuristics))
            save("fda_summary", observation3.summary_table(r3))
            save("fda_rescue", observation3.rescue_curve(r3))
            save("fda_neurons", r3.neurons)
            heat = observation3.heatmap_data(r3)  # None without a memorized noisy instance
            if heat is not None:
                save("fda_heat", heat[0])
                (args.out / "fda_heat.txt").write_text(heat[2])
        r4 = analyse(4)
        save(f"{task}_survival", observation4.survival_table(r4))
        save(f"{task}_dependence", observation4.dependence_table(r4))
        r5 = analyse(5)
        save(f"{task}_circuit_curves", r5.curves)
        save(f"{task}_circuit_edges", circuits.circuit_table(r5))
        print(task, "seconds per observation:", ", ".join(f"{n}: {s:.1f}" for n, s in seconds.items()), flush=True)
    (args.out / "claims.json").write_text(claims.to_json(records))
    if args.check:
        differences = compare(args.out, args.check)
        print("\n".join(differences) or f"every number as in {args.check}")
        raise SystemExit(1 if differences else 0)


def compare(out: Path, golden: Path) -> list[str]:
    """One line per file of `golden` that `out` lacks, has in excess, or has with other bytes (with
    the first line that differs)."""
    names = {p.name for p in golden.iterdir()} | {p.name for p in out.iterdir()}
    differences = []
    for name in sorted(names):
        if not (golden / name).exists() or not (out / name).exists():
            differences.append(f"{name}: only in {golden if (golden / name).exists() else out}")
            continue
        new, old = (out / name).read_text().splitlines(), (golden / name).read_text().splitlines()
        if new != old:
            at = next((i for i, (a, b) in enumerate(zip(new, old)) if a != b), min(len(new), len(old)))
            differences.append(f"{name}: line {at + 1} differs ({len(old)} lines golden, {len(new)} now)")
    return differences


if __name__ == "__main__":
    main()
