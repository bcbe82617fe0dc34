"""FLOP counting with :class:`torch.utils.flop_counter.FlopCounterMode`.

PyTorch's counter knows matmuls, convolutions and the CUDA attention kernels, but
reports 0 for operators it has no formula for. These matter here:

* the CPU fused attention kernel ``aten._scaled_dot_product_flash_attention_for_cpu``
  (and its backward), which is what ``F.scaled_dot_product_attention`` runs on CPU;
* the FFTs ``aten._fft_r2c``, ``aten._fft_c2c`` and ``aten._fft_c2r`` (FNet and
  spectral mixers);
* the in-place matmuls ``aten.baddbmm_`` and ``aten.addmm_`` (counted as their
  out-of-place forms).

:func:`register_extra_flop_formulas` adds formulas for them. Conventions, chosen to
match PyTorch's own formulas so CPU and GPU counts agree:

* a multiply-add is 2 FLOPs (``(m, k) @ (k, n)`` costs ``2 m n k``);
* attention is counted as dense ``Q K^T`` and ``P V`` products whether causal or not
  (PyTorch's CUDA SDPA formulas ignore ``is_causal`` too); softmax is not counted;
* a complex FFT of length ``n`` costs ``5 n log2 n`` real FLOPs (the classic radix-2
  count); a real-input (``r2c``) or real-output (``c2r``) FFT costs half of that,
  ``2.5 n log2 n``. A transform over several dimensions costs, per transformed
  dimension ``d``, ``(elements / n_d)`` transforms of length ``n_d``.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import torch
from torch.utils import flop_counter as _fc

aten = torch.ops.aten

__all__ = [
    "register_extra_flop_formulas",
    "sdpa_forward_flops",
    "sdpa_backward_flops",
    "fft_flops",
    "count_flops",
    "forward_and_step_flops",
]


def sdpa_forward_flops(q_shape: Sequence[int], k_shape: Sequence[int], v_shape: Sequence[int]) -> int:
    """FLOPs of attention forward: ``q (B, H, Nq, Dk)``, ``k (B, Hkv, Nk, Dk)``, ``v (B, Hkv, Nk, Dv)``.

    ``2 B H Nq Nk Dk`` for the scores plus ``2 B H Nq Nk Dv`` for the weighted sum.
    """
    b, h, nq, dk = q_shape
    nk, dv = k_shape[2], v_shape[3]
    return 2 * b * h * nq * nk * dk + 2 * b * h * nq * nk * dv


def sdpa_backward_flops(q_shape: Sequence[int], k_shape: Sequence[int], v_shape: Sequence[int]) -> int:
    """FLOPs of attention backward: recompute ``Q K^T`` (1), ``dP = dO V^T`` (2), ``dV = P^T dO`` (3),
    ``dQ = dS K`` (4), ``dK = dS^T Q`` (5): five products of ``2 B H Nq Nk d`` each.
    """
    b, h, nq, dk = q_shape
    nk, dv = k_shape[2], v_shape[3]
    return 2 * b * h * nq * nk * (dk + dv + dv + dk + dk)


def fft_flops(shape: Sequence[int], dims: Sequence[int], lengths: Sequence[int] | None = None,
              real: bool = False) -> int:
    """FLOPs of an FFT over ``dims`` of a tensor with ``shape``.

    Args:
        shape: shape of the complex side of the transform (for ``r2c`` pass the real
            input's shape, for ``c2r`` the real output's shape).
        dims: transformed dimensions.
        lengths: transform length per dim (defaults to ``shape[d]``).
        real: a real-to-complex or complex-to-real transform (half the cost).
    """
    numel = math.prod(int(s) for s in shape)
    total = 0.0
    for i, d in enumerate(dims):
        n = int(lengths[i]) if lengths is not None else int(shape[d])
        if n <= 1:
            continue
        transforms = numel / int(shape[d]) if int(shape[d]) else 0
        total += transforms * 5.0 * n * math.log2(n)
    if real:
        total /= 2.0
    return int(round(total))


# --------------------------------------------------------------- registrations
def _cpu_sdpa_flop(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_forward_flops(query_shape, key_shape, value_shape)


def _cpu_sdpa_backward_flop(grad_out_shape, query_shape, key_shape, value_shape, *args,
                            out_shape=None, **kwargs) -> int:
    return sdpa_backward_flops(query_shape, key_shape, value_shape)


def _fft_r2c_flop(self_shape, dim, normalization=None, onesided=None, *args, out_shape=None, **kwargs) -> int:
    return fft_flops(self_shape, _norm_dims(dim, len(self_shape)), real=True)


def _fft_c2c_flop(self_shape, dim, normalization=None, forward=None, *args, out_shape=None, **kwargs) -> int:
    return fft_flops(self_shape, _norm_dims(dim, len(self_shape)), real=False)


def _fft_c2r_flop(self_shape, dim, normalization=None, last_dim_size=None, *args, out_shape=None,
                  **kwargs) -> int:
    # Count on the real output: its last transformed dim has length ``last_dim_size``.
    shape = list(out_shape) if out_shape is not None else list(self_shape)
    return fft_flops(shape, _norm_dims(dim, len(shape)), real=True)


def _baddbmm_flop(self_shape, a_shape, b_shape, *args, out_shape=None, **kwargs) -> int:
    batch, rows, inner = a_shape
    return 2 * batch * rows * inner * b_shape[-1]  # the add is not counted, as in PyTorch's formula


def _addmm_flop(self_shape, a_shape, b_shape, *args, out_shape=None, **kwargs) -> int:
    rows, inner = a_shape
    return 2 * rows * inner * b_shape[-1]


def _norm_dims(dim: Any, rank: int) -> list[int]:
    dims = [dim] if isinstance(dim, int) else list(dim)
    return [d % rank for d in dims]


_EXTRA: list[tuple[Any, Callable[..., int]]] = [
    (aten._scaled_dot_product_flash_attention_for_cpu, _cpu_sdpa_flop),
    (aten._scaled_dot_product_flash_attention_for_cpu_backward, _cpu_sdpa_backward_flop),
    (aten._fft_r2c, _fft_r2c_flop),
    (aten._fft_c2c, _fft_c2c_flop),
    (aten._fft_c2r, _fft_c2r_flop),
    # In-place accumulating matmuls (PyTorch counts only the out-of-place packets): the
    # memory-lean causal core accumulates into preallocated outputs with them.
    (aten.baddbmm_, _baddbmm_flop),
    (aten.addmm_, _addmm_flop),
]


def register_extra_flop_formulas() -> list[str]:
    """Register the formulas above with PyTorch's FLOP counter (idempotent).

    An operator that already has a formula (a later PyTorch may add its own) is left
    alone. Returns the names of the operators registered by this call.
    """
    done = []
    for op, formula in _EXTRA:
        if op in _fc.flop_registry:
            continue
        _fc.register_flop_formula(op)(formula)
        done.append(str(op))
    return done


def count_flops(fn: Callable[[], Any]) -> int:
    """Total FLOPs of running ``fn()`` once (extra formulas registered)."""
    register_extra_flop_formulas()
    with _fc.FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def forward_and_step_flops(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[int, int]:
    """``(forward FLOPs, training-step FLOPs)`` of ``model`` on one ``batch``.

    The training step is forward + backward of ``model(**batch).loss``; the optimiser
    update (element-wise) is not counted. Gradients are cleared afterwards, so the
    model is left as it was.
    """
    was_training = model.training
    model.eval()
    with torch.no_grad():
        fwd = count_flops(lambda: model(**batch))
    model.train(was_training)

    def step() -> None:
        out = model(**batch)
        loss = out["loss"] if isinstance(out, dict) else out.loss
        loss.backward()

    train = count_flops(step)
    model.zero_grad(set_to_none=True)
    return fwd, train
