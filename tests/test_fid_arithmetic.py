"""FID on CUDA says what arithmetic it used: TF32 off in the Inception network (restored after), reference
statistics cached per device and recording it, and one warning line when reference and samples differ."""

import types

import numpy as np
import pytest
import torch

from evaluations import ref_stats
from evaluations.convert_inception import torch_fidelity_layout
from evaluations.inception import InceptionFeatures, exact_float32
from evaluations.sources import open_image_source


def tf32_flags():
    return torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32


@pytest.fixture
def tf32_on():
    # PyTorch's default for cuDNN is on; matmul is set on too, as users of `torch.set_float32_matmul_precision` have it.
    saved = tf32_flags()
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def test_exact_float32_turns_tf32_off_and_restores_it_even_after_an_error(tf32_on):
    with pytest.raises(ZeroDivisionError):
        with exact_float32():
            assert tf32_flags() == (False, False)
            1 / 0
    assert tf32_flags() == (True, True)


def test_the_inception_forward_runs_with_tf32_off(tf32_on, tmp_path):
    weights = tmp_path / "random_inception.pth"
    torch.save(torch_fidelity_layout().state_dict(), weights)
    inception = InceptionFeatures(str(weights), device="cpu")
    seen = []
    inception.extractor.register_forward_pre_hook(lambda module, args: seen.append(tf32_flags()))
    features = inception(np.zeros((1, 32, 32, 3), dtype=np.uint8))
    assert seen == [(False, False)] and tf32_flags() == (True, True)
    assert features["2048"].shape == (1, 2048) and inception.arithmetic == "cpu float32"


def stub_inception(weights, device_type):
    return types.SimpleNamespace(weights_path=str(weights), arithmetic=f"{device_type} float32",
                                 device=torch.device(device_type))


def test_the_statistics_cache_is_keyed_by_arithmetic(image_folder_factory, tmp_path):
    weights = tmp_path / "w.pth"
    weights.write_bytes(b"12345")
    source = open_image_source(str(image_folder_factory(["a.png", "b.png"])))
    keys = {ref_stats.statistics_cache_key(source, stub_inception(weights, d)) for d in ("cpu", "cuda")}
    assert len(keys) == 2


def test_reference_and_samples_of_other_arithmetic_are_said_in_one_line(tmp_path):
    weights = tmp_path / "w.pth"
    weights.write_bytes(b"12345")
    recorded, unrecorded = tmp_path / "ref.npz", tmp_path / "adm_ref.npz"
    ref_stats.save_statistics(str(recorded), np.zeros(3), np.eye(3), 10, arithmetic="cpu float32")
    ref_stats.save_statistics(str(unrecorded), np.zeros(3), np.eye(3), 10)
    note = ref_stats.arithmetic_mismatch(str(recorded), stub_inception(weights, "cuda"))
    assert note == (f"reference {str(recorded)!r} was computed in cpu float32, the samples' features in cuda float32: "
                    "the FID mixes the two (rewrite the reference with evaluations.ref_stats --device cuda to "
                    "compare like with like)")
    assert ref_stats.arithmetic_mismatch(str(recorded), stub_inception(weights, "cpu")) is None
    assert ref_stats.arithmetic_mismatch(str(unrecorded), stub_inception(weights, "cuda")) is None
    assert ref_stats.arithmetic_mismatch(str(tmp_path), stub_inception(weights, "cuda")) is None
