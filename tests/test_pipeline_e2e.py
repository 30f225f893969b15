"""A toy plan from dataset to tables, run for real: 2 weightings x 2 step counts, then re-runs."""

import io
import json
import os
import re

import pytest

from pipeline import reproduce

CONFIG = """
[model]
image_size = 16
num_channels = 32
num_res_blocks = 1
channel_mult = "1,2"
attention_resolutions = "8"
learn_sigma = false
[diffusion]
diffusion_steps = 100
noise_schedule = "linear"
[train]
batch_size = 8
lr = 1e-3
ema_rate = "0.9"
[sample]
batch_size = 8
"""

PLAN = """
[plan]
name = "toy"
launcher = "local"

[prepare]
image_size = 16
num_images = 64

[train]
max_steps = 4
save_interval = 4
log_interval = 2

[sample]
num_samples = 8
samplers = [{{ sampler = "ddim", steps = [2], evaluate = false }}, {{ sampler = "ddim", steps = [4] }}]

[evaluate]
ref_flags = {{ num_images = 16 }}

[[datasets]]
name = "embedded"
config = "{config}"
runs = ["constant", "debias"]

[figures.weight_curves]
script = "weight_curves"

[figures.fid_curves]
script = "fid_curves"
inputs = ["results"]

[report]
out = "{root}/report"
"""


def started(text):
    return set(re.findall(r"started (\S+)", text))


@pytest.mark.slow
def test_toy_plan_end_to_end_then_reruns(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # stages run their entry points by module, from any directory
    config = tmp_path / "toy.toml"
    config.write_text(CONFIG)
    root = tmp_path / "work"
    plan = tmp_path / "plan.toml"
    plan.write_text(PLAN.format(config=config, root=root))

    out = io.StringIO()
    counts = reproduce(str(plan), root=str(root), jobs=2, stream=out)
    log = out.getvalue()
    assert counts.get("failed", 0) == 0, log
    assert counts["ran"] == 1 + 1 + 2 + 4 + 2 + 1 + 2 + 1  # prepare ref train sample evaluate tables figures report

    lines = [json.loads(l) for l in open(root / "results" / "results.jsonl")]
    cells = {(l["weight_schedule"], l["sampler"], l["steps"]) for l in lines}
    assert cells == {("constant", "ddim", 4), ("debias", "ddim", 4)}  # T = 2 is sampled, not evaluated
    assert all(l["num_samples"] == 8 and l["fid"] > 0 and l["iterations"] == 4 for l in lines)
    for name in ("table1.md", "table_other.md"):
        assert (root / "results" / "tables" / name).exists()
    for fig in ("weight_curves", "fid_curves"):
        assert (root / "figures" / f"{fig}.png").stat().st_size > 0
    report = (root / "report" / "README.md").read_text()
    assert "| ddim | 4 |" in report and "debias" in report

    # A second run finds every stage done.
    out = io.StringIO()
    counts = reproduce(str(plan), root=str(root), jobs=2, stream=out)
    assert counts.get("ran", 0) == 0 and counts["done"] == 14, out.getvalue()

    # Losing one sample file re-runs that cell, its evaluation and what gathers results; nothing else.
    sample_dir = root / "samples" / "embedded" / "debias" / "000004" / "ddim4"
    os.remove(sample_dir / "samples_8x16x16x3.npz")
    out = io.StringIO()
    counts = reproduce(str(plan), root=str(root), jobs=2, stream=out)
    ran = started(out.getvalue())
    cell = "embedded/debias/000004/ddim4"
    assert {s for s in ran if s.split("/")[0] in ("prepare", "ref", "train", "sample", "evaluate")} == {
        f"sample/{cell}",
        f"evaluate/{cell}",
    }
    assert counts.get("failed", 0) == 0
    assert len([json.loads(l) for l in open(root / "results" / "results.jsonl")]) == 3
