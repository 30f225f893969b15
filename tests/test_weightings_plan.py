"""The shipped comparison of the field's weightings (configs/plans/weightings.toml), at toy size, end to end.

Sizes shrink (images, steps, samples, bootstrap resamples, one checkpoint, DDPM-100 evaluated for two runs:
the Inception passes are most of a CPU's time here); the structure stays the plan's own: every run it
names trains from its plan key and is evaluated, the figures (the learned weighting's included) and
the report are written.
"""

import io
import json
import tomllib
from pathlib import Path

import pytest

from pipeline import expand, load_plan, reproduce
from tests.test_pipeline_e2e import CONFIG
from tests.test_study_plan import run_to_the_end, write_toml

PLAN = Path(__file__).resolve().parents[1] / "configs" / "plans" / "weightings.toml"
RUNS = ["constant", "debias", "edm+edm-lognormal", "edm2+edm2-lognormal", "sigmoid", "soft_min_snr", "constant+laplace"]


def test_the_plan_sets_the_papers_weighting_beside_the_fields_at_the_demos_size():
    plan = load_plan(str(PLAN))
    (dataset,) = plan.datasets
    assert [run.name for run in dataset.runs] == RUNS
    assert dataset.config.endswith("configs/demo.toml") and dataset.name == "embedded"
    assert dataset.iterations == [2000, 4000] and dataset.train["max_steps"] == 4000
    stages = {s.name for s in expand(plan)}
    for run in RUNS:
        for cell in ("ddim25", "ddpm100"):
            assert {f"evaluate/embedded/{run}/{step}/{cell}" for step in ("002000", "004000")} <= stages
    assert "figure/learned_weights" in stages and plan.report["out"] == "docs/weightings_study"


def toy_plan(tmp_path):
    plan = tomllib.loads(PLAN.read_text())
    config = tmp_path / "toy.toml"
    config.write_text(CONFIG.replace("diffusion_steps = 100", "diffusion_steps = 250"))
    plan["prepare"]["num_images"] = 64
    plan["train"].update(max_steps=2, save_interval=2, log_interval=1)
    plan["sample"]["num_samples"] = 8
    ddim, ddpm = plan["sample"]["samplers"]
    assert (ddim["sampler"], ddpm["sampler"]) == ("ddim", "ddpm")
    ddpm["runs"] = ["constant", "edm2+edm2-lognormal"]
    plan["evaluate"].update(ref_flags={"num_images": 16, "features": True}, bootstrap=2)
    (dataset,) = plan["datasets"]
    dataset.update(config=str(config), iterations=[2])
    plan["report"]["out"] = str(tmp_path / "report")
    path = tmp_path / "weightings.toml"
    write_toml(plan, path)
    return path


def plan_figures(path):
    return list(tomllib.loads(Path(path).read_text())["figures"])


@pytest.mark.slow
def test_the_weightings_plan_runs_end_to_end_at_toy_size(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    plan = toy_plan(tmp_path)
    root = tmp_path / "work"
    run_to_the_end(plan, root)
    ddpm_runs = ["constant", "edm2+edm2-lognormal"]

    lines = [json.loads(line) for line in open(root / "results" / "results.jsonl")]
    cells = {(l["weight_schedule"] + ("" if l["schedule_sampler"] == "uniform" else "+" + l["schedule_sampler"]),
              l["iterations"], l["sampler"], l["steps"]) for l in lines}
    assert cells == {(run, 2, "ddim", 25) for run in RUNS} | {(run, 2, "ddpm", 100) for run in ddpm_runs}
    manifest = json.loads((root / "runs" / "embedded" / "edm2+edm2-lognormal" / "checkpoint000002.json").read_text())
    assert manifest["flags"]["weight_schedule"] == "edm2" and manifest["flags"]["schedule_sampler"] == "edm2-lognormal"
    assert manifest["files"]["loss_weighting"] == "loss_weighting000002.pt"
    for figure in plan_figures(plan):
        assert (root / "figures" / f"{figure}.png").stat().st_size > 0
    learned = (root / "figures" / "learned_weights.csv").read_text()
    assert all(f",{run}," in learned for run in RUNS)
    report = (tmp_path / "report" / "README.md").read_text()
    assert "edm2+edm2-lognormal" in report and "constant+laplace" in report

    out = io.StringIO()
    counts = reproduce(str(plan), root=str(root), jobs=2, stream=out)
    assert counts.get("ran", 0) == 0, out.getvalue()
