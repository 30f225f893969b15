"""Training seeds: a run's seed in the plan grammar, the registry and the report, and the seed-aware rule
for "resolved" (the larger of the seed and the bootstrap standard deviation)."""

import json
import os

import numpy as np
import pytest

from evaluations.registry import latest
from pipeline import seeds
from pipeline.plan import PlanError, Run, load_plan
from pipeline.readings import RESOLVED_SIGMAS
from pipeline.report import write_report
from pipeline.stages import expand

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEEDS_PLAN = os.path.join(REPO, "configs", "plans", "seeds.toml")


def test_a_seed_is_part_of_a_run_and_only_named_when_not_the_default():
    run = Run.parse("debias+loss-weight#seed2", "test")
    assert (run.weight_schedule, run.schedule_sampler, run.seed) == ("debias", "loss-weight", 2)
    assert (run.name, run.dir_name) == ("debias+loss-weight#seed2", "debias+loss-weight_seed2")
    assert run.first_seed == Run.parse("debias+loss-weight", "test")
    assert Run.parse("p2#seed0", "test").name == "p2"
    assert Run.parse("constant@x0#seed1", "test").dir_name == "x0_constant_seed1"


@pytest.mark.parametrize("text", ["p2#1", "p2#seed", "p2#seed-1", "p2#seedx", "p2#seed١"])
def test_a_badly_written_seed_is_refused_in_one_line(text):
    with pytest.raises(PlanError, match=r"#seedN with N a whole number") as err:
        Run.parse(text, "plan x")
    assert "\n" not in str(err.value)


def test_a_plan_wide_seed_is_refused_because_it_is_set_per_run(tmp_path):
    text = open(SEEDS_PLAN).read().replace("num_workers = 0", "num_workers = 0\nseed = 3")
    plan = tmp_path / "plan.toml"
    plan.write_text(text)
    with pytest.raises(PlanError, match=r"\[train\] seed is set per run by 'runs'"):
        load_plan(str(plan))


def test_seed_runs_train_with_their_seed_and_sample_with_the_same_noise():
    stages = {s.name: s for s in expand(load_plan(SEEDS_PLAN, root="/tmp/seeds-root"))}
    seeded, default = stages["train/embedded/p2#seed2"].argv, stages["train/embedded/p2"].argv
    assert seeded[seeded.index("--seed") + 1] == "2" and "--seed" not in default
    assert seeded[seeded.index("--log_dir") + 1].endswith("runs/embedded/p2_seed2")
    sample = stages["sample/embedded/p2#seed2/001000/ddim25"].argv
    assert "--seed" not in sample
    assert [a.replace("p2_seed2", "p2") for a in sample] == stages["sample/embedded/p2/001000/ddim25"].argv


def record(weighting, seed, fid, fid_std, kid=0.05, kid_std=0.002, sampler="ddim", steps=25):
    line = dict(dataset="embedded", weight_schedule=weighting, pred="eps", schedule_sampler="uniform", iterations=1000,
                sampler=sampler, steps=steps, num_samples=400, fid=fid, fid_std=fid_std, kid=kid, kid_std=kid_std,
                checkpoint_hash=f"{weighting}{seed}", date="2026-12-07T00:00:00+00:00")
    if seed is not None:
        line["train_seed"] = seed
    return line


def test_the_registry_keeps_one_cell_per_seed_and_reads_a_line_without_one_as_seed_0():
    cells = latest([record("p2", None, 10.0, 1.0), record("p2", 1, 11.0, 1.0), record("p2", 0, 12.0, 1.0)])
    by_seed = {cell[4]: r["fid"] for cell, r in cells.items()}
    assert by_seed == {0: 12.0, 1: 11.0}  # the seed-0 line and the older line without a seed are one cell


# constant: FIDs 100, 104, 96 (seed std 4) with bootstrap 2; debias: 90, 95, 88 with bootstrap 3.
CONSTANT = {0: 100.0, 1: 104.0, 2: 96.0}
DEBIAS = {0: 90.0, 1: 95.0, 2: 88.0}


def fid_cells():
    cells = {}
    for weighting, values, std in (("constant", CONSTANT, 2.0), ("debias", DEBIAS, 3.0)):
        for seed, fid in values.items():
            name = Run(weighting, seed=seed).name
            cells[(name, "ddim", 25)] = record(weighting, seed, fid, std)
    return cells


def groups():
    return seeds.seed_groups([Run(w, seed=s) for w in ("constant", "debias") for s in (0, 1, 2)])


def test_spread_is_the_larger_of_the_seed_and_bootstrap_standard_deviations():
    spread = seeds.spreads(fid_cells(), groups(), "fid")
    constant, debias = spread[("constant", "ddim", 25)], spread[("debias", "ddim", 25)]
    assert constant.seed_std == pytest.approx(4.0) and constant.bootstrap == pytest.approx(2.0)
    assert constant.uncertainty == (pytest.approx(4.0), "seed")
    assert debias.seed_std == pytest.approx(np.std(list(DEBIAS.values()), ddof=1))
    assert debias.mean == pytest.approx(91.0)
    # KID: every run's subset spread (0.002) exceeds a seed spread of 0 (all KIDs equal).
    kid = seeds.spreads(fid_cells(), groups(), "kid")[("debias", "ddim", 25)]
    assert kid.uncertainty == (pytest.approx(0.002), "bootstrap")


def test_comparisons_are_paired_by_seed_and_judged_by_the_seed_aware_rule():
    lines = seeds.seed_lines(fid_cells(), groups())
    sentence = next(line for line in lines if line.startswith("debias against constant, FID"))
    per_run = np.hypot(np.std(list(DEBIAS.values()), ddof=1), 4.0)
    assert "per seed -10.0, -9.0, -8.0" in sentence and "mean over 3 seeds -9.0" in sentence
    mean_verdict = "resolved" if 9.0 > RESOLVED_SIGMAS * per_run / np.sqrt(3) else "within the uncertainty"
    single_verdict = "resolved" if 10.0 > RESOLVED_SIGMAS * per_run else "within the uncertainty"
    assert f"mean over 3 seeds -9.0, lower ({mean_verdict})" in sentence
    assert f"seed 0 alone: -10.0, lower ({single_verdict})" in sentence
    assert single_verdict == "within the uncertainty"  # 10 < 2 x 5.6: the seed spread undoes a bootstrap "resolved"
    assert "by the bootstrap alone it would be lower (resolved)" in sentence  # 10 > 2 x hypot(3, 2)
    assert "the same sign at every seed" in sentence
    head = next(line for line in lines if line.startswith("**Seed spread, FID"))
    assert "constant 4.0 against 2.0" in head and "larger for 2 of 2 weightings" in head


def test_the_seeds_report_has_the_seed_table_and_no_bootstrap_only_verdicts(tmp_path):
    root = tmp_path / "work"
    os.makedirs(root / "results")
    with open(root / "results" / "results.jsonl", "w") as f:
        for w in ("p2", "min_snr"):
            for s in (0, 1, 2):
                f.write(json.dumps(record(w, s, 120.0 + s, 2.0)) + "\n")
        for key, cell in fid_cells().items():
            f.write(json.dumps(cell) + "\n")
    text = open(write_report(SEEDS_PLAN, str(root), str(tmp_path / "report"))).read()
    assert "## Training seeds at 1,000 iterations" in text
    assert "| ddim | 25 | FID | constant | 100.0 | 104.0 | 96.0 | 100.0 | 4.0 | 2.0 | seed |" in text
    assert "| ddim | 25 | FID | **91.0 ± 3.0**" not in text  # the FID table has one column per weighting (seed 0)
    assert "| ddim | 25 | FID | 100.0 ± 2.0 | 120.0 ± 2.0 | 120.0 ± 2.0 | **90.0 ± 3.0** |" in text
    assert "**FID and KID** (" not in text  # the one-run-at-a-time reading is replaced by the seed-aware one
    assert "debias against constant, FID (DDIM T=25" in text
    assert "**In progress.** Not evaluated yet at 1,000 iterations: DDPM T=100 for 12 of 12 runs." in text


def _section_tables(text, headings):
    """The table rows and bullet sentences under each heading that starts with one of `headings`."""
    lines, keep = [], False
    for line in text.splitlines():
        if line.startswith("## "):
            keep = line.startswith(headings)
        elif keep and line.startswith(("|", "- ")):
            lines.append(line)
    return lines


@pytest.mark.parametrize("plan, report", [("seeds.toml", "seeds"), ("seeds_4k.toml", "seeds_4k")])
def test_the_committed_seed_reports_are_regenerated_from_their_committed_results(tmp_path, plan, report):
    committed = os.path.join(REPO, "docs", "study", report)
    if not os.path.exists(os.path.join(committed, "results.jsonl")):
        pytest.skip(f"docs/study/{report} has no results.jsonl: that plan has not been run to its report yet")
    os.makedirs(tmp_path / "work" / "results")
    with open(os.path.join(committed, "results.jsonl")) as src, open(tmp_path / "work" / "results" / "results.jsonl", "w") as dst:
        dst.write(src.read())
    plan_path = os.path.join(REPO, "configs", "plans", plan)
    text = open(write_report(plan_path, str(tmp_path / "work"), str(tmp_path / "report"))).read()
    headings = ("## What the numbers show", "## FID and KID", "## Training seeds", "## FID over training")
    expected = _section_tables(open(os.path.join(committed, "README.md")).read(), headings)
    assert expected and _section_tables(text, headings) == expected
