"""``torch.compile`` of the UNet without a recompile per batch composition.

DiffEdit calls the UNet with batches of many sizes: ``call_denoiser`` cuts each stage's samples into
calls of at most ``max_batch`` and a remainder, and a batch job's last rows make smaller batches
still. A plainly compiled module specialises on the first batch size, recompiles on the second
(then marking it dynamic) and again for a batch of one (sizes 0 and 1 are always specialised). Here
the batch dimension of every tensor input is marked dynamic from the first call and a batch of one
is padded to two (the padded sample is dropped from the output), so a batch size never recompiles
by itself. Library code that branches on the batch size still splits it into ranges, each compiled
once: diffusers' upsampling switches kernels at a batch of 64, and a batch of >= 16 takes another
convolution path on the CPU (measured: sizes 2-15 and 16-63 are two graphs). ``compiles`` counts the
graphs compiled, so the benchmark shows that the count stops growing after the first batches.

Each sample's prediction depends on that sample alone (no batch statistics in a UNet at inference),
so the padding never changes a real sample's result beyond kernel-choice rounding.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch


class CompiledUNet(torch.nn.Module):
    """A UNet2DConditionModel compiled with ``torch.compile``, dynamic in the batch dimension.

    Behaves as the UNet for DiffEdit's calls: ``forward(sample, timestep, encoder_hidden_states,
    **kwargs)`` returns the UNet's output (``.sample``); ``config``, ``dtype`` and ``device`` are the
    UNet's. ``compiles`` counts the graphs compiled (by the backend), so a recompile is visible.
    """

    def __init__(self, unet: torch.nn.Module, *, backend: str = "inductor", mode: str | None = None) -> None:
        super().__init__()
        self.unet = unet  # the eager module (its parameters are the compiled one's)
        self.compiles = 0  # graphs compiled so far (a recompile adds one)
        inner = torch._dynamo.lookup_backend(backend)

        def counting_backend(gm: torch.fx.GraphModule, example_inputs: list[Any]) -> Callable[..., Any]:
            self.compiles += 1
            return inner(gm, example_inputs)

        self._compiled = torch.compile(unet, backend=counting_backend, mode=mode, dynamic=None)

    @property
    def config(self) -> Any:
        return self.unet.config

    @property
    def dtype(self) -> torch.dtype:
        return next(self.unet.parameters()).dtype

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @torch.inference_mode()  # one dispatch-key set for every input (else a guard fails: a recompile)
    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        n = sample.shape[0]
        timestep = torch.as_tensor(timestep, device=sample.device)
        if timestep.dim() == 0:
            timestep = timestep.expand(n)
        if n == 1:  # pad to 2: a batch of one would be specialised (a second graph)
            sample, timestep, args, kwargs = _map_batch(
                lambda x: torch.cat([x, x], dim=0), n, sample, timestep, args, kwargs
            )
        sample, timestep, args, kwargs = _map_batch(_mark, sample.shape[0], sample, timestep, args, kwargs)
        out = self._compiled(sample, timestep, *args, **kwargs)
        if n == 1:
            if isinstance(out, tuple):
                return (out[0][:1], *out[1:])
            out.sample = out.sample[:1]
        return out


def _mark(x: torch.Tensor) -> torch.Tensor:
    # A fresh contiguous inference tensor: an expanded (stride-0) batch, or a tensor made outside
    # inference mode, would be guarded on and recompile when the next call's differs.
    x = x.clone(memory_format=torch.contiguous_format)
    torch._dynamo.mark_dynamic(x, 0)
    return x


def _map_batch(fn: Callable[[torch.Tensor], torch.Tensor], n: int, *values: Any) -> Any:
    """``fn`` applied to every tensor (nested in tuples, lists and dicts) whose first dimension is the
    batch (size ``n``); other values unchanged."""

    def go(v: Any) -> Any:
        if isinstance(v, torch.Tensor):
            return fn(v) if v.dim() > 0 and v.shape[0] == n else v
        if isinstance(v, dict):
            return {k: go(x) for k, x in v.items()}
        if isinstance(v, (tuple, list)):
            return type(v)(go(x) for x in v)
        return v

    return tuple(go(v) for v in values)
