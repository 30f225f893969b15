"""Mixed precision for training: fp32, fp16 with dynamic loss scaling (ADM's scheme), bf16 autocast.

fp16 follows ADM: the UNet's torso runs in float16 (`convert_to_fp16`), the optimizer
updates float32 master copies of the parameters, and the loss is multiplied by
2**lg_loss_scale before backward so small gradients survive float16. A step whose
gradients are not finite is skipped and halves the scale; every taken step grows the
log2 scale by `fp16_scale_growth`. bf16 has float32's exponent range, so it needs no
loss scaling: the forward pass runs under `torch.autocast` and the weights stay float32.
"""

import contextlib
import math

import torch

PRECISIONS = ("fp32", "fp16", "bf16")
INITIAL_LG_LOSS_SCALE = 20.0


def resolve_precision(precision, use_fp16, device_type=None):
    """The precision to run in, from `--precision` ("" = unset) and ADM's `--use_fp16`; training and sampling alike.

    ADM's `--use_fp16 True` stands on every MODEL_FLAGS line of its README; on a
    device without fast float16 (`device_type` "cpu") it runs fp32, because
    float16 convolutions there are tens of times slower (see `fp16_fallback_note`).
    An explicit `--precision fp16` is honoured everywhere.
    """
    if precision not in ("",) + PRECISIONS:
        raise ValueError(f"unknown --precision {precision!r}; expected one of {', '.join(PRECISIONS)}")
    if use_fp16:
        if precision not in ("", "fp16"):
            raise ValueError(f"--use_fp16 True conflicts with --precision {precision}; give one of them")
        return "fp32" if device_type == "cpu" and not precision else "fp16"
    return precision or "fp32"


def fp16_fallback_note(precision, use_fp16, resolved):
    """The one line that says `--use_fp16 True` was run in fp32, or None."""
    if use_fp16 and not precision and resolved == "fp32":
        return "--use_fp16 True: this device has no fast float16, running fp32 (give --precision fp16 to insist)"
    return None


def autocast_model(model, precision, device):
    """model(x, t, **kw) under the autocast that `precision` asks for, returning float32.

    fp16 on CUDA uses ADM's float16 torso (`convert_to_fp16`) instead, so the model is returned as it is.
    """
    if precision == "fp32" or (precision == "fp16" and device.type == "cuda"):
        return model
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16

    def forward(x, timesteps, **kwargs):
        with torch.autocast(device_type=device.type, dtype=dtype):
            return model(x, timesteps, **kwargs).float()

    return forward


def _row_major(tensor):
    """`tensor` with row-major strides: checkpoints keep the default layout whatever the training one.

    `contiguous()` is not enough: a channels_last 1x1 kernel counts as contiguous with other strides.
    """
    if tensor.stride() == torch.empty(tensor.shape, device="meta").stride():
        return tensor
    return tensor.clone(memory_format=torch.contiguous_format)


class MixedPrecisionTrainer:
    """Owns the backward pass and the optimizer step for one of the `PRECISIONS`.

    `master_params` are what the optimizer updates and what checkpoints store (float32).
    """

    def __init__(self, *, model, precision="fp32", fp16_scale_growth=1e-3, initial_lg_loss_scale=INITIAL_LG_LOSS_SCALE):
        if precision not in PRECISIONS:
            raise ValueError(f"unknown precision {precision!r}; expected one of {', '.join(PRECISIONS)}")
        self.model = model
        self.precision = precision
        self.fp16_scale_growth = fp16_scale_growth
        self.lg_loss_scale = initial_lg_loss_scale
        self.param_names = [name for name, _ in model.named_parameters()]
        self.model_params = list(model.parameters())
        if precision == "fp16":
            self.master_params = [p.detach().clone().float().requires_grad_(True) for p in self.model_params]
            model.convert_to_fp16()
        else:
            self.master_params = self.model_params

    def autocast(self):
        """The context for forward passes."""
        if self.precision == "bf16":
            device_type = self.model_params[0].device.type
            return torch.autocast(device_type=device_type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def zero_grad(self):
        for p in self.model_params:
            p.grad = None
        if self.master_params is not self.model_params:
            for p in self.master_params:
                p.grad = None

    def backward(self, loss):
        if self.precision == "fp16":
            (loss * 2**self.lg_loss_scale).backward()
        else:
            loss.backward()

    def _master_grads(self):
        if self.precision != "fp16":
            return
        scale = 2**self.lg_loss_scale
        for master, param in zip(self.master_params, self.model_params):
            master.grad = None if param.grad is None else param.grad.float() / scale

    def grad_norm(self):
        squares = [torch.linalg.vector_norm(p.grad.float()) ** 2 for p in self.master_params if p.grad is not None]
        if not squares:
            return 0.0
        return math.sqrt(float(torch.stack(squares).sum()))

    def param_norm(self):
        with torch.no_grad():
            return math.sqrt(float(sum(torch.linalg.vector_norm(p.float()) ** 2 for p in self.master_params)))

    def grad_square_sum(self):
        """The sum of squares of the unscaled gradients as a 0-d tensor on the device (nothing read back).

        For `optimize(..., checked=True)`: the caller folds its finiteness into one host read of its own.
        """
        self._master_grads()
        squares = [torch.linalg.vector_norm(p.grad.float()) ** 2 for p in self.master_params if p.grad is not None]
        return torch.stack(squares).sum() if squares else torch.zeros((), device=self.master_params[0].device)

    def optimize(self, opt, skip=False, checked=False):
        """Step `opt` unless the gradients (or the caller, with `skip`) say not to.

        Returns (took_step, grad_norm); grad_norm is of the unscaled gradients. With `checked` the
        caller has called `grad_square_sum()` and put its finiteness into `skip`: nothing is read
        from the device here, and grad_norm is None.
        """
        if checked:
            grad_norm, finite = None, True
        else:
            self._master_grads()
            grad_norm = self.grad_norm()
            finite = math.isfinite(grad_norm)
        if skip or not finite:
            if self.precision == "fp16":
                self.lg_loss_scale -= 1
            self.zero_grad()
            return False, grad_norm
        opt.step()
        if self.precision == "fp16":
            with torch.no_grad():
                for master, param in zip(self.master_params, self.model_params):
                    param.copy_(master)
            self.lg_loss_scale += self.fp16_scale_growth
        self.zero_grad()
        return True, grad_norm

    def master_params_to_state_dict(self, params=None):
        """A float32 CPU state dict of the model with `params` (default: the master parameters)."""
        params = self.master_params if params is None else params
        state = {k: v.detach().cpu() for k, v in self.model.state_dict().items()}
        for name, value in zip(self.param_names, params):
            state[name] = _row_major(value.detach().float().cpu())
        return state

    def state_dict_to_master_params(self, state_dict):
        """Tensors in `master_params` order from a (validated) model state dict."""
        device = self.master_params[0].device
        return [state_dict[name].to(device=device, dtype=torch.float32) for name in self.param_names]
