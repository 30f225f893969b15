"""The shipped Table 2 plan, offline, at tiny size: every cell gets its FID, and IS is recorded missing
with its reason (the offline Inception has no logits layer), so the table shows why, not a blank."""

import os
import pathlib

import numpy as np
import pytest
from PIL import Image

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

from evaluations import tables
from evaluations.registry import read_results
from tests.test_study_plan import run_to_the_end, write_toml

TABLE2 = pathlib.Path(__file__).resolve().parent.parent / "configs" / "plans" / "table2.toml"
# Two of the plan's four weightings, to keep the suite's time: the other two cells are built the same way.
WEIGHTINGS = ["constant", "debias"]
CLASSES = ["cat", "dog"]

# The shipped configs' model at the smallest size that keeps their kind: class-conditional,
# learned sigma, the datasets' own T (1000) so that Table 2's step counts (1000 and 100) hold.
TINY_CONFIG = """
[model]
image_size = 16
num_channels = 32
num_res_blocks = 1
channel_mult = "1,2"
attention_resolutions = "8"
num_head_channels = 16
class_cond = true
num_classes = 2
[diffusion]
learn_sigma = true
diffusion_steps = 1000
noise_schedule = "linear"
[train]
batch_size = 4
lr = 1e-3
ema_rate = "0.9"
[sample]
batch_size = 8
"""


def labelled_images(folder, count=16, size=16):
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        image = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        Image.fromarray(image).save(folder / f"{CLASSES[i % 2]}_{i:05d}.png")


def tiny_table2(tmp_path):
    plan = tomllib.loads(TABLE2.read_text())
    config = tmp_path / "tiny.toml"
    config.write_text(TINY_CONFIG)
    plan["plan"].update(launcher="local", nproc=1)
    plan["train"].update(max_steps=2, save_interval=2, log_interval=1, num_workers=0)
    plan["sample"].update(num_samples=8, batch_size=8)
    plan["evaluate"]["ref_flags"] = {"num_images": 16}
    for dataset in plan["datasets"]:
        data = tmp_path / "data" / dataset["name"]
        labelled_images(data)
        del dataset["source"]
        assert dataset["runs"] == ["constant", "p2", "min_snr", "debias"]
        dataset.update(config=str(config), data_dir=str(data), runs=WEIGHTINGS)
    path = tmp_path / "table2.toml"
    write_toml(plan, path)
    return path


@pytest.mark.slow
def test_table2_plan_offline_records_fid_for_every_cell_and_is_as_missing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    plan = tiny_table2(tmp_path)
    root = tmp_path / "work"
    run_to_the_end(plan, root)

    records = read_results(str(root / "results" / "results.jsonl"))
    cells = {(r["dataset"], r["weight_schedule"], r["sampler"], r["steps"]): r for r in records}
    assert set(cells) == {(d, w, "ddpm", s) for d, s in (("cifar10", 1000), ("imagenet", 100)) for w in WEIGHTINGS}
    for record in cells.values():
        assert np.isfinite(record["fid"]) and np.isfinite(record["sfid"]) and record["is"] is None
        assert record["missing"]["is"].startswith("no logits layer"), record["missing"]

    table2 = tables.build_tables(records, iterations=2)[1]
    rows = {(row[0], row[2]): row for row in table2.rows}
    for dataset in ("CIFAR-10", "ImageNet"):
        for column in ("Constant", "Ours (debias)"):
            fid = rows[(dataset, "FID")][table2.header.index(column)]
            inception_score = rows[(dataset, "IS")][table2.header.index(column)]
            assert fid.ours is not None
            assert inception_score.ours is None and inception_score.text().startswith("n/a[")
    (reason,) = table2.notes
    assert reason.startswith("IS not computed: no logits layer")
