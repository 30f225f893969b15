"""The report states only what its numbers show, in whichever direction they go."""

import csv
import json
import os

import pytest

from pipeline import readings
from pipeline.report import write_report

DEMO_PLAN = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "plans", "demo.toml")
RUNS = ["constant", "p2", "min_snr", "debias"]


def write_csv(path, rows):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def mse_rows():
    """eps MSE 1.0 (constant), 0.5 (debias), 2.0 (others) at t >= 600; the reverse at t < 200; x0 = eps / 10."""
    rows = []
    for t in (0, 100, 300, 700, 999):
        for curve, noisy, clean in (("Initial", 4.0, 4.0), ("constant", 1.0, 1.0), ("p2", 2.0, 0.5),
                                    ("min_snr", 2.0, 0.5), ("debias", 0.5, 2.0)):
            mse = noisy if t >= 600 else clean if t < 200 else 1.0
            rows.append(dict(t=t, curve=curve, mse=mse, sem=0.0, x0_mse=mse / 10, x0_sem=0.0, num_images=8))
    return rows


def colour_csv_rows():
    """Constant's Frechet distance is the largest at T=10 but the smallest at T=2, so the T=2 row reverses the
    average's direction for every other weighting."""
    rows = [dict(checkpoint="reference", steps="", num_images=100, mean_spread=36.0, spatial_mean_fd=0.0,
                 rough_fraction=0.01, **{f"std_{c}": 57.0 for c in "rgb"})]
    for run, spread, fd, rough in (("constant", 90.0, 4000.0, 0.2), ("p2", 60.0, 2000.0, 0.3),
                                   ("min_snr", 70.0, 3000.0, 0.25), ("debias", 38.0, 102.0, 0.1)):
        for steps in (2, 10):
            rows.append(dict(checkpoint=run, steps=steps, num_images=50, mean_spread=spread + steps,
                             spatial_mean_fd=fd * 2 if steps == 10 else 500.0 + fd / 1000 if run != "constant" else 400.0,
                             rough_fraction=rough + (0.5 if steps == 2 else 0.0), **{f"std_{c}": 90.0 for c in "rgb"}))
    return rows


def registry_line(run, fid, fid_std, kid):
    return dict(dataset="embedded", weight_schedule=run, pred="eps", iterations=1000, sampler="ddim", steps=25,
                num_samples=400, fid=fid, fid_std=fid_std, kid=kid, kid_std=0.001, date="2026-11-22T10:00:00+00:00")


def test_band_means_and_changes():
    means = readings.band_means(mse_rows(), "mse")
    assert means[("debias", "t >= 600")] == 0.5 and means[("debias", "t < 200")] == 2.0
    assert means[("constant", "200 <= t < 600")] == 1.0
    assert readings.describe_change(readings.relative_change(0.5, 1.0)) == "50% lower"
    assert readings.describe_change(readings.relative_change(2.0, 1.0)) == "100% higher"
    assert readings.describe_change(readings.relative_change(1.001, 1.0)) == "equal"


def test_headline_states_each_direction_for_every_weighting():
    mse = readings.band_means(mse_rows(), "mse")
    x0 = readings.band_means(mse_rows(), "x0_mse")
    colour = [c for c in readings.colour_rows(colour_csv_rows()) if c.run != "reference"]
    fid = {(r, "ddim", 25): registry_line(r, f, 1.0, k) for r, f, k in
           (("constant", 100.0, 0.10), ("p2", 101.0, 0.11), ("min_snr", 110.0, 0.12), ("debias", 90.0, 0.05))}
    lines = readings.headline(RUNS, colour, mse, x0, fid, data_spread=36.0)
    text = "\n".join(lines)
    # Averages over T = 2, 10: constant (400 + 8000) / 2 = 4200, p2 (502 + 4000) / 2 = 2251, debias (500.102 + 204) / 2
    assert "is 4200.0 for constant weighting; against it: p2 46% lower (2251.0); min_snr 23% lower (3251.5); debias 92% lower (352.1)" in text
    assert ("Not at every T: at T=2 p2 (502.0), min_snr (503.0), debias (500.1) are on the other side of constant "
            "(400.0).") in text
    assert ("than 99% of the training images, at T = 2/10: constant 70/20%; p2 80/30%; min_snr 75/25%; debias 60/10%. "
            "At T=10, against constant weighting: p2 50% higher; min_snr 25% higher; debias 50% lower.") in text
    assert "92-100 for constant and 62-70 for p2; 72-80 for min_snr; 40-48 for debias, against 36 for the training images" in text
    assert "x0 is 0.1000 for constant weighting; against it: p2 100% higher; min_snr 100% higher; debias 50% lower" in text
    assert "over t >= 600 is p2 100% higher; min_snr 100% higher; debias 50% lower" in text
    assert "over t < 200 it is p2 50% lower; min_snr 50% lower; debias 100% higher" in text
    assert "constant 0.25x, p2 0.50x, min_snr 0.50x, debias 0.12x" in text
    # 1 +- hypot(1, 1) * 2: a FID difference of 1 is within the uncertainty, 10 is resolved.
    # KID spread 0.001 on both: a difference of 0.01 exceeds 2 * hypot(0.001, 0.001).
    assert "p2 FID 1% higher (within the uncertainty), KID 10% higher (resolved)" in text
    assert "min_snr FID 10% higher (resolved)" in text
    assert "debias FID 10% lower (resolved), KID 50% lower (resolved)" in text


def test_demo_report_from_stage_outputs(tmp_path):
    root = tmp_path / "work"
    write_csv(str(root / "figures" / "mse_step.csv"), mse_rows())
    write_csv(str(root / "figures" / "color_shift.csv"), colour_csv_rows())
    os.makedirs(root / "results")
    with open(root / "results" / "results.jsonl", "w") as f:
        for run, fid in (("constant", 120.0), ("p2", 118.0), ("min_snr", 119.0), ("debias", 130.0)):
            f.write(json.dumps(registry_line(run, fid, 1.5, 0.02)) + "\n")
    path = write_report(DEMO_PLAN, str(root), str(tmp_path / "report"))
    text = open(path).read()
    assert "| ddim | 25 | FID | 120.0 ± 1.5 | **118.0 ± 1.5** | 119.0 ± 1.5 | 130.0 ± 1.5 |" in text
    assert "| ddim | 25 | KID x 1000 | 20.00 ± 1.00 |" in text
    assert "debias FID 8% higher (resolved)" in text
    assert "| 2 | spread of image means | 92.0 | 62.0 | 72.0 | 40.0 | 36.0 |" in text
    assert "| 10 | rough samples (%) | 20.0 | 30.0 | 25.0 | 10.0 | 1.0 |" in text
    assert "| Initial | 0.4000 | — |" in text and "| debias | 0.2000 | +100.0% |" in text
    assert "1,000 iterations x batch 64" in text and "0.999 with warm-up" in text


def test_colour_csv_without_rough_column_still_reports(tmp_path):
    """A colour CSV written before rough_fraction existed: colour rows and sentences, no grain row or sentence."""
    root = tmp_path / "work"
    old_rows = [{k: v for k, v in row.items() if k != "rough_fraction"} for row in colour_csv_rows()]
    write_csv(str(root / "figures" / "color_shift.csv"), old_rows)
    text = open(write_report(DEMO_PLAN, str(root), str(tmp_path / "report"))).read()
    assert "| 2 | spread of image means | 92.0 | 62.0 | 72.0 | 40.0 | 36.0 |" in text
    assert "**Colour shift.**" in text
    assert "rough samples" not in text and "**Grain.**" not in text


@pytest.mark.parametrize("missing", ["mse_step.csv", "color_shift.csv", "results.jsonl"])
def test_report_leaves_out_what_was_not_measured(tmp_path, missing):
    root = tmp_path / "work"
    write_csv(str(root / "figures" / "mse_step.csv"), mse_rows())
    write_csv(str(root / "figures" / "color_shift.csv"), colour_csv_rows())
    os.makedirs(root / "results")
    with open(root / "results" / "results.jsonl", "w") as f:
        f.write(json.dumps(registry_line("constant", 100.0, 1.0, 0.1)) + "\n")
    for candidate in (root / "figures" / missing, root / "results" / missing):
        if candidate.exists():
            candidate.unlink()
    text = open(write_report(DEMO_PLAN, str(root), str(tmp_path / "report"))).read()
    section = {"mse_step.csv": "## Noise error", "color_shift.csv": "## Colour shift", "results.jsonl": "## FID and KID"}
    assert section[missing] not in text
