"""FID over training in the report (Fig. 7a), and figures older than their inputs are not read."""

import json
import os
import time

from pipeline import curves
from pipeline.report import write_report
from tests.test_report import colour_csv_rows, mse_rows, write_csv

STUDY_PLAN = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "plans", "study.toml")
RUNS = ["constant", "p2", "min_snr", "debias"]
# FID per checkpoint: debias starts behind constant and ends ahead; p2 stays ahead; min_snr within noise;
# debias with importance-sampled timesteps a little ahead of debias throughout.
FIDS = {
    "constant": {1000: 170.0, 2000: 143.0, 4000: 130.0, 6000: 126.0, 8000: 124.0},
    "p2": {1000: 158.0, 2000: 135.0, 4000: 120.0, 6000: 117.0, 8000: 115.0},
    "min_snr": {1000: 171.0, 2000: 144.0, 4000: 131.0, 6000: 125.0, 8000: 125.0},
    "debias": {1000: 215.0, 2000: 164.0, 4000: 122.0, 6000: 112.0, 8000: 104.0},
    "debias+loss-weight": {1000: 205.0, 2000: 158.0, 4000: 119.0, 6000: 110.0, 8000: 103.0},
}


def records(sampler="ddim", steps=25, std=3.0):
    return [
        dict(dataset="embedded", weight_schedule=run.split("+")[0], pred="eps",
             schedule_sampler=run.split("+")[1] if "+" in run else "uniform", iterations=it, sampler=sampler,
             steps=steps, num_samples=400, fid=fid, fid_std=std, kid=fid / 1000, kid_std=0.004, date="2026-12-03T10:00:00+00:00")
        for run, points in FIDS.items()
        for it, fid in points.items()
    ]


def test_curve_sentences_state_every_checkpoint_and_where_the_order_changes():
    cells = curves.curve_cells(records(), "embedded")
    (setting,) = cells
    assert setting == ("ddim", 25) and sorted(cells[setting]["debias"]) == [1000, 2000, 4000, 6000, 8000]
    assert cells[setting]["debias+loss-weight"][8000]["fid"] == 103.0
    lines = curves.curve_lines("ddim", 25, cells[setting], RUNS)
    assert lines[0].startswith("**FID over training (DDIM T=25).** From 1,000 to 8,000 iterations: constant 170.0 → 124.0 (-46.0)")
    debias = next(line for line in lines if line.startswith("debias"))
    # 215 - 170 = +45 against sqrt(3^2 + 3^2) = 4.24: resolved; 122 - 130 = -8 < 2 x 4.24: not resolved.
    assert "1,000: +45.0, higher (resolved)" in debias and "4,000: -8.0, lower (within the uncertainty)" in debias
    assert "8,000: -20.0, lower (resolved)" in debias
    assert "between 2,000 and 4,000 iterations debias moves ahead of constant" in debias
    p2 = next(line for line in lines if line.startswith("p2"))
    assert "p2's FID is below constant's at every checkpoint." in p2
    min_snr = next(line for line in lines if line.startswith("min_snr"))
    assert "moves behind constant" in min_snr and "moves ahead of constant" in min_snr


def test_an_importance_sampled_run_is_set_against_constant_and_against_its_uniform_twin():
    cells = curves.curve_cells(records(), "embedded")[("ddim", 25)]
    lines = curves.curve_lines("ddim", 25, cells, RUNS + ["debias+loss-weight"])
    against_constant, against_debias = [line for line in lines if line.startswith("debias+loss-weight")]
    assert against_constant.startswith("debias+loss-weight against constant") and "1,000: +35.0, higher (resolved)" in against_constant
    # 205 - 215 = -10 against 2 x sqrt(3^2 + 3^2) = 8.49: resolved; 158 - 164 = -6: not resolved.
    assert against_debias.startswith("debias+loss-weight against debias, FID difference (debias+loss-weight minus debias")
    assert "1,000: -10.0, lower (resolved); 2,000: -6.0, lower (within the uncertainty)" in against_debias
    assert against_debias.endswith("debias+loss-weight's FID is below debias's at every checkpoint. KID at 8,000: lower (within the uncertainty).")
    assert sum(line.startswith("debias against") for line in lines) == 1


def test_curve_table_rows_are_checkpoints_with_the_best_in_bold():
    table = curves.curve_table(curves.curve_cells(records(), "embedded")[("ddim", 25)], RUNS)
    assert "| 1,000 | FID | 170.0 ± 3.0 | **158.0 ± 3.0** | 171.0 ± 3.0 | 215.0 ± 3.0 |" in table
    assert "| 8,000 | FID | 124.0 ± 3.0 | 115.0 ± 3.0 | 125.0 ± 3.0 | **104.0 ± 3.0** |" in table
    assert "| 8,000 | KID x 1000 | 124.0 ± 4.0 |" in table


def test_a_setting_at_one_checkpoint_is_no_curve():
    single = [r for r in records(sampler="ddpm", steps=250) if r["iterations"] == 8000]
    assert curves.curve_cells(single + records(), "embedded").keys() == {("ddim", 25)}


def study_root(tmp_path):
    root = tmp_path / "work"
    os.makedirs(root / "results")
    with open(root / "results" / "results.jsonl", "w") as f:
        for line in records() + [r for r in records(sampler="ddpm", steps=250) if r["iterations"] == 8000]:
            f.write(json.dumps(line) + "\n")
    write_csv(str(root / "figures" / "mse_step.csv"), mse_rows())
    write_csv(str(root / "figures" / "color_shift.csv"), colour_csv_rows())
    return root


def test_study_report_has_the_curve_and_the_last_checkpoint_table(tmp_path):
    root = study_root(tmp_path)
    text = open(write_report(STUDY_PLAN, str(root), str(tmp_path / "report"))).read()
    assert "## FID over training iterations (DDIM T=25; Fig. 7a)" in text
    assert "## FID and KID on `embedded` at 8,000 iterations (mini Table 1)" in text
    last_table = text.split("(mini Table 1)")[1]
    # Only the 8,000-iteration records: constant's 124.0, never its 1,000-iteration 170.0.
    assert "124.0 ± 3.0" in last_table and "170.0" not in last_table and "| ddpm | 250 |" in last_table
    assert "Colour shift (Fig. 1, 6) at 8,000 iterations, DDIM samples" in text
    assert "Not read" not in text


def test_a_figure_older_than_its_checkpoints_is_marked_and_not_read(tmp_path):
    root = study_root(tmp_path)
    past = time.time() - 3600
    for name in ("mse_step.csv", "color_shift.csv"):
        os.utime(root / "figures" / name, (past, past))
    checkpoint = root / "runs" / "embedded" / "debias" / "ema_0.999_008000.pt"
    os.makedirs(checkpoint.parent)
    checkpoint.write_bytes(b"newer than the figure")
    text = open(write_report(STUDY_PLAN, str(root), str(tmp_path / "report"))).read()
    assert "**Not read: `mse_step`.** Its CSV is older than `runs/embedded/debias/ema_0.999_008000.pt`" in text
    assert "Image error of the one-step estimate" not in text and "Image error at noisy steps" not in text
    # The colour figure is computed from samples, not from that checkpoint, so it is still read.
    assert "Not read: `color_shift`" not in text and "## Colour shift" in text


def test_a_study_under_way_says_how_far_it_got(tmp_path):
    root = tmp_path / "work"
    os.makedirs(root / "results")
    with open(root / "results" / "results.jsonl", "w") as f:
        for line in records():
            debias_at_2000 = (line["iterations"], line["weight_schedule"], line["schedule_sampler"]) == (2000, "debias", "uniform")
            if line["iterations"] <= 2000 and not debias_at_2000:
                f.write(json.dumps(line) + "\n")
    text = open(write_report(STUDY_PLAN, str(root), str(tmp_path / "report"))).read()
    assert "**In progress.** Results cover every weighting and sampler up to 1,000 iterations; the plan goes to 8,000." in text
    assert "| 2,000 | FID | 143.0 ± 3.0 | **135.0 ± 3.0** | 144.0 ± 3.0 | — | 158.0 ± 3.0 |" in text
    assert "In progress" not in open(write_report(STUDY_PLAN, str(study_root(tmp_path / "done")),
                                                  str(tmp_path / "report2"))).read()


def test_a_curve_never_resolved_apart_says_so():
    close = {run: {1000: 150.0 + (1.0 if run == "min_snr" else 0.0), 2000: 140.0 + (2.0 if run == "min_snr" else 0.0)}
             for run in ("constant", "min_snr")}
    cells = {run: {it: dict(fid=fid, fid_std=3.0) for it, fid in points.items()} for run, points in close.items()}
    (line,) = [l for l in curves.curve_lines("ddim", 25, cells, ["constant", "min_snr"]) if l.startswith("min_snr")]
    assert line.endswith("min_snr's FID is above constant's at every checkpoint, no difference resolved.")
    single = {run: {1000: points[1000]} for run, points in cells.items()}
    assert curves.curve_lines("ddim", 25, single, ["constant", "min_snr"]) == []
