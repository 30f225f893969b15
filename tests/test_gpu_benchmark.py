"""The GPU benchmark and the ADM baseline harness at tiny size on the CPU: they run, count FLOPs right and
derive their columns consistently. Nothing here is timed (speed is the benchmarks' business)."""

import json
from pathlib import Path

import pytest
import torch

from guided_diffusion.script_util import create_model_and_diffusion
from guided_diffusion.unet import AttentionBlock
from scripts.benchmarks import adm_baseline, gpu_benchmark, measure
from tests.tiny import tiny_flags

REPO = Path(__file__).resolve().parents[1]
ADM_CHECKOUT = REPO / "third_party" / "guided-diffusion"
TINY_RUN = ["--tiny", "--precisions", "fp32", "--compile", "off", "--train_steps", "1", "--sample_steps", "1", "--warmup", "0"]


def independent_forward_flops(flags, batch=1):
    """2 x multiply-adds of every convolution and linear layer, plus attention's two matrix products (4 T^2 C)."""
    model, _ = create_model_and_diffusion(**flags)
    counts = []

    def layer(module, inputs, output):
        per_output = module.weight[0].numel() if not isinstance(module, torch.nn.Linear) else module.in_features
        counts.append(2 * output.numel() * per_output)

    def attention(module, inputs, output):
        batch_size, channels = inputs[0].shape[:2]
        tokens = inputs[0][0, 0].numel()
        counts.append(4 * batch_size * tokens * tokens * channels)

    for module in model.modules():
        if isinstance(module, (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Linear)):
            module.register_forward_hook(layer)
        elif isinstance(module, AttentionBlock):
            module.register_forward_hook(attention)
    with torch.no_grad():
        model(torch.randn(batch, 3, flags["image_size"], flags["image_size"]), torch.zeros(batch, dtype=torch.long))
    return sum(counts)


def test_flop_counts_match_an_independent_count():
    flags = tiny_flags()
    cpu = torch.device("cpu")
    forward = gpu_benchmark.forward_flops_per_image(flags, cpu)
    assert forward == independent_forward_flops(flags)
    # A training step is a forward and a backward pass of about twice its cost.
    assert 2.9 * 2 * forward < gpu_benchmark.training_flops(flags, 2, cpu) < 3.1 * 2 * forward


def test_peak_flops_by_device_and_precision():
    cpu = torch.device("cpu")
    assert measure.peak_tflops(cpu, "bf16") is None and measure.peak_tflops(cpu, "bf16", 100.0) == 100.0
    assert dict(measure.PEAK_TFLOPS)["H100"] == {"fp16": 989.4, "bf16": 989.4, "fp32": 494.7}
    row = measure.training_row("bf16", 8, 0.5, 2e12, 100.0, None)
    assert row["images_per_s"] == 16 and row["tflops"] == 4.0 and row["mfu"] == 0.04
    row = measure.sampling_row("DDIM-50", 64, 0.1, 50, 3e12, 12.5)
    assert row["images_per_s"] == pytest.approx(64 / 5.0) and row["tflops"] == pytest.approx(30.0)


def test_gpu_benchmark_runs_at_tiny_size_on_the_cpu(tmp_path, capsys):
    out = tmp_path / "rows.json"
    assert gpu_benchmark.main(TINY_RUN + ["--json", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [(r["kind"], r["label"], r["batch"]) for r in rows] == [
        ("train", "fp32", 8), ("sample", "DDPM-100 fp32", 16), ("sample", "DDIM-50 fp32", 16),
    ]
    flops = gpu_benchmark.training_flops(tiny_flags(), 8, torch.device("cpu"))
    train = rows[0]
    assert train["mfu"] is None and train["peak_gib"] is None
    assert train["images_per_s"] == pytest.approx(8 / (train["step_ms"] / 1e3))
    assert train["tflops"] == pytest.approx(flops / (train["step_ms"] / 1e3) / 1e12)
    for row, steps in zip(rows[1:], (100, 50)):
        assert row["steps"] == steps and row["images_per_s"] == pytest.approx(16 / (row["step_ms"] / 1e3 * steps))
    printed = capsys.readouterr().out
    assert "tiny test UNet: 16x16, 0.8M parameters; cpu" in printed and "DDIM-50 fp32" in printed


def test_ratios_pair_each_row_with_adms_of_the_same_setting():
    ours = [dict(kind="train", label="bf16 + compile", images_per_s=30.0),
            dict(kind="sample", label="DDIM-50 bf16", images_per_s=9.0)]
    adm = [dict(kind="train", label="ADM fp16", images_per_s=12.0), dict(kind="train", label="ADM fp32", images_per_s=6.0),
           dict(kind="sample", label="ADM DDIM-50 fp16", images_per_s=3.0)]
    lines = adm_baseline.ratio_lines(ours, adm).splitlines()
    assert lines[0].index("vs ADM fp32") < lines[0].index("vs ADM fp16")
    assert lines[1].split()[-2:] == ["5.00x", "2.50x"] and lines[2].split()[-2:] == ["—", "3.00x"]


def test_adm_baseline_without_a_checkout_is_a_one_line_error(tmp_path, capsys):
    assert adm_baseline.main(TINY_RUN + ["--adm_dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no openai/guided-diffusion checkout there (git clone" in err


@pytest.mark.skipif(not (ADM_CHECKOUT / "guided_diffusion").is_dir(), reason="no ADM checkout in third_party/guided-diffusion")
def test_adm_baseline_runs_adms_code_at_tiny_size(tmp_path):
    out = tmp_path / "ratios.json"
    argv = TINY_RUN + ["--adm_dir", str(ADM_CHECKOUT), "--adm_precisions", "fp32", "--json", str(out)]
    assert adm_baseline.main(argv) == 0
    result = json.loads(out.read_text())
    assert [r["label"] for r in result["adm"]] == ["ADM fp32", "ADM DDPM-100 fp32", "ADM DDIM-50 fp32"]
    assert all(r["images_per_s"] > 0 for r in result["adm"])
    # ADM samples at the batch ours used.
    assert [r["batch"] for r in result["adm"][1:]] == [r["batch"] for r in result["ours"][1:]] == [16, 16]
