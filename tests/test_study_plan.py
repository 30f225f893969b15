"""The shipped CPU study plan (configs/plans/study.toml), shrunk to toy size and run end to end.

Sizes shrink (images, training steps, samples, bootstrap resamples, two weightings instead of four,
the first and last checkpoints, one step count per sampler row); the structure stays the plan's
own: checkpoints trained stage by stage, DDIM and DDPM at every checkpoint, the extra rows of the
mini Table 1 at the last, its figures and its report.
"""

import io
import json
import tomllib
from pathlib import Path

import pytest

from pipeline import expand, load_plan, reproduce
from tests.test_pipeline_e2e import CONFIG

STUDY = Path(__file__).resolve().parents[1] / "configs" / "plans" / "study.toml"
TOY_ITERATIONS = {1000: 2, 8000: 4}


def toml_value(value):
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return "{ " + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + " }"


def write_toml(plan, path):
    lines = []
    for section, body in plan.items():
        entries = body if isinstance(body, list) else [body]
        for entry in entries:
            lines.append(f"[[{section}]]" if isinstance(body, list) else f"[{section}]")
            lines += [f"{k} = {toml_value(v)}" for k, v in entry.items() if not (isinstance(v, dict) and section == "figures")]
            for name, figure in (entry.items() if section == "figures" else []):
                lines.append(f"[figures.{name}]")
                lines += [f"{k} = {toml_value(v)}" for k, v in figure.items()]
    path.write_text("\n".join(lines) + "\n")


def toy_study(tmp_path):
    plan = tomllib.loads(STUDY.read_text())
    config = tmp_path / "toy.toml"
    config.write_text(CONFIG.replace("diffusion_steps = 100", "diffusion_steps = 250"))
    plan["prepare"]["num_images"] = 64
    plan["train"].update(max_steps=TOY_ITERATIONS[plan["train"]["max_steps"]], save_interval=1, log_interval=1)
    plan["sample"]["num_samples"] = 8
    for setting in plan["sample"]["samplers"]:
        setting["steps"] = setting["steps"][:1]
        if "iterations" in setting:
            setting["iterations"] = [TOY_ITERATIONS[it] for it in setting["iterations"]]
    plan["evaluate"].update(ref_flags={"num_images": 16, "features": True}, bootstrap=2)
    (dataset,) = plan["datasets"]
    dataset.update(config=str(config), runs=["constant", "debias+loss-weight"])
    dataset["iterations"] = [TOY_ITERATIONS[dataset["iterations"][0]], TOY_ITERATIONS[dataset["iterations"][-1]]]
    plan["figures"]["mse_step"].update(num_images=4, stride=50)
    plan["report"]["out"] = str(tmp_path / "report")
    path = tmp_path / "study.toml"
    write_toml(plan, path)
    return path


def test_the_study_plan_covers_fig7a_and_a_mini_table1():
    plan = load_plan(str(STUDY))
    (dataset,) = plan.datasets
    assert [run.name for run in dataset.runs] == ["constant", "p2", "min_snr", "debias", "debias+loss-weight"]
    assert dataset.iterations == [1000, 2000, 4000, 6000, 8000]
    stages = {s.name for s in expand(plan)}
    for it in dataset.iterations:
        for cell in ("ddim25", "ddpm100"):
            assert f"evaluate/embedded/debias/{it:06d}/{cell}" in stages
    for cell in ("ddpm25", "ddpm50", "ddpm250", "ddim10", "ddim50"):
        assert f"evaluate/embedded/p2/008000/{cell}" in stages
        assert f"evaluate/embedded/p2/004000/{cell}" not in stages


def run_to_the_end(plan, root):
    """Run a plan with two jobs and assert that every stage ran (none failed, none blocked)."""
    out = io.StringIO()
    counts = reproduce(str(plan), root=str(root), jobs=2, stream=out)
    assert counts.get("failed", 0) == 0 and counts.get("blocked", 0) == 0, out.getvalue()


@pytest.mark.slow
def test_the_study_plan_runs_end_to_end_at_toy_size(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    plan = toy_study(tmp_path)
    root = tmp_path / "work"
    run_to_the_end(plan, root)

    lines = [json.loads(line) for line in open(root / "results" / "results.jsonl")]
    # The importance-sampled run's lines say so: they are a model of their own, not debias's.
    cells = {(l["weight_schedule"] + ("" if l["schedule_sampler"] == "uniform" else "+" + l["schedule_sampler"]),
              l["iterations"], l["sampler"], l["steps"]) for l in lines}
    for run in ("constant", "debias+loss-weight"):
        assert {(run, it, sampler, steps) for it in (2, 4) for sampler, steps in [("ddim", 25), ("ddpm", 100)]} <= cells
        assert {(run, 4, "ddpm", 25), (run, 4, "ddim", 10)} <= cells
    assert len(cells) == 2 * (2 + 2 + 2)
    for figure in ("fid_curves_ddim", "fid_curves_ddpm", "color_shift", "mse_step"):
        assert (root / "figures" / f"{figure}.png").stat().st_size > 0
    # The colour figure reads the last checkpoint's DDIM samples only (T = 2, 10, 25), never a DDPM cell.
    colour = (root / "figures" / "color_shift.csv").read_text()
    assert "ddpm" not in colour
    report = (tmp_path / "report" / "README.md").read_text()
    assert "debias+loss-weight" in report and "ddpm" in report

    out = io.StringIO()
    counts = reproduce(str(plan), root=str(root), jobs=2, stream=out)
    assert counts.get("ran", 0) == 0, out.getvalue()
