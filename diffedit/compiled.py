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

**Static mode** (``static_batches``, the GPU path, ``ModelBundle.optimize(compile_unet=True)`` on
CUDA): batches are padded up to the next of a few fixed sizes (``padded_sizes(max_batch)``: powers of
two and ``max_batch`` itself) and compiled with static shapes, one graph per (padded batch, latent and
text shape), which is what CUDA graphs (``mode="reduce-overhead"``) need; their outputs are copied out
of the graph's static buffers. The graphs are bounded (``max_graphs``): a shape beyond the bound runs
eager, with a warning naming it, never a silent fall-back (dynamo's own recompile limit is raised to
the bound, so it never falls back first).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import torch

log = logging.getLogger(__name__)


def padded_sizes(max_batch: int) -> tuple[int, ...]:
    """The batch sizes of static mode: 1, 2, 4, ... below ``max_batch``, and ``max_batch``."""
    sizes = {max_batch}
    size = 1
    while size < max_batch:
        sizes.add(size)
        size *= 2
    return tuple(sorted(sizes))


class CompiledUNet(torch.nn.Module):
    """A UNet2DConditionModel compiled with ``torch.compile``, dynamic in the batch dimension.

    Behaves as the UNet for DiffEdit's calls: ``forward(sample, timestep, encoder_hidden_states,
    **kwargs)`` returns the UNet's output (``.sample``); ``config``, ``dtype`` and ``device`` are the
    UNet's. ``compiles`` counts the graphs compiled (by the backend), so a recompile is visible.
    """

    def __init__(
        self,
        unet: torch.nn.Module,
        *,
        backend: str = "inductor",
        mode: str | None = None,
        static_batches: Sequence[int] | None = None,
        max_graphs: int = 32,
    ) -> None:
        super().__init__()
        self.unet = unet  # the eager module (its parameters are the compiled one's)
        self.compiles = 0  # graphs compiled so far (a recompile adds one)
        self.static_batches = tuple(sorted(static_batches)) if static_batches else None
        self.max_graphs = max_graphs
        self.mode = mode
        self._shapes: set[tuple] = set()  # static mode: the signatures compiled (or being compiled)
        self._refused: set[tuple] = set()  # static mode: signatures beyond the bound (run eager, warned)
        inner = torch._dynamo.lookup_backend(backend)

        def counting_backend(gm: torch.fx.GraphModule, example_inputs: list[Any]) -> Callable[..., Any]:
            self.compiles += 1
            return inner(gm, example_inputs)

        if self.static_batches:
            limit = torch._dynamo.config.recompile_limit
            torch._dynamo.config.recompile_limit = max(limit, max_graphs)
            torch._dynamo.config.accumulated_recompile_limit = max(
                torch._dynamo.config.accumulated_recompile_limit, 4 * max_graphs
            )
        self._compiled = torch.compile(
            unet, backend=counting_backend, mode=mode, dynamic=False if self.static_batches else None
        )

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
        if self.static_batches:
            return self._static(n, sample, timestep, args, kwargs)
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

    def _static(self, n: int, sample: torch.Tensor, timestep: torch.Tensor, args: Any, kwargs: Any) -> Any:
        """Static mode (module docstring): pad to the next fixed size, one graph per signature, bounded."""
        size = next((s for s in self.static_batches if s >= n), None)
        if size is None:
            raise ValueError(
                f"CompiledUNet: a batch of {n} exceeds the largest static size {self.static_batches[-1]}"
            )
        pad = size - n

        def padded(x: torch.Tensor) -> torch.Tensor:  # repeat the last sample: (size, ...)
            # Always a fresh contiguous inference tensor (as ``_mark``): a guard on strides or on a tensor
            # made outside inference mode would recompile.
            x = torch.cat([x, x[-1:].expand(pad, *x.shape[1:])], dim=0) if pad else x
            return x.clone(memory_format=torch.contiguous_format)

        sample, timestep, args, kwargs = _map_batch(padded, n, sample, timestep, args, kwargs)
        signature = tuple(_shapes_of((sample, timestep, args, kwargs)))
        if signature not in self._shapes and len(self._shapes) >= self.max_graphs:
            if signature not in self._refused:
                self._refused.add(signature)
                log.warning(
                    "CompiledUNet: %d graphs compiled, the bound (max_graphs); this shape runs eager: %s",
                    len(self._shapes),
                    signature[:1],
                )
            out = self.unet(sample, timestep, *args, **kwargs)
        else:
            self._shapes.add(signature)
            out = self._compiled(sample, timestep, *args, **kwargs)
        first = out[0] if isinstance(out, tuple) else out.sample
        first = (
            first[:n].clone() if (pad or self.mode == "reduce-overhead") else first
        )  # out of static buffers
        if isinstance(out, tuple):
            return (first, *out[1:])
        out.sample = first
        return out


def _shapes_of(value: Any) -> list[tuple]:
    """Every tensor's (shape, dtype) in ``value`` (nested), in order: a static graph's signature."""
    if isinstance(value, torch.Tensor):
        return [(tuple(value.shape), value.dtype)]
    if isinstance(value, dict):
        return [s for k in sorted(value) for s in _shapes_of(value[k])]
    if isinstance(value, (tuple, list)):
        return [s for v in value for s in _shapes_of(v)]
    return []


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
