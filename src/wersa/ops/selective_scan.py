"""The selective state-space scan of Mamba (S6): chunked parallel form and its reference.

For every channel ``d`` and state index ``n`` (Gu & Dao, arXiv 2312.00752)::

    h_t[d, n] = exp(delta_t[d] * A[d, n]) * h_{t-1}[d, n] + delta_t[d] * B_t[g(d), n] * u_t[d]
    y_t[d]    = sum_n C_t[g(d), n] * h_t[d, n]  (+ D[d] * u_t[d])  (* silu(z_t[d]))

``exp(delta A)`` is the zero-order hold of ``A``; ``delta * B`` is the Euler step used
by the reference ``selective_scan_ref`` (not the exact ZOH of ``B``), kept for parity.
``g(d) = d // (Dm / G)`` maps a channel to one of ``G`` groups of ``B``/``C``
(``G = 1`` is the original Mamba).

:func:`selective_scan` runs the recurrence in chunks of ``chunk_size`` tokens. Inside a
chunk, with ``S_t = sum_{s <= t} delta_s A`` (cumulative log-decay from the chunk start)::

    h_t = exp(S_t) h_0 + sum_{s <= t} exp(S_t - S_s) delta_s B_s u_s

The differences ``S_t - S_s`` are formed *before* exponentiating and masked to
``s <= t`` first, so nothing overflows (``exp(cumsum)`` followed by a division, the
naive factorisation, under/overflows after a few hundred tokens). The state is
carried across chunks, so memory is ``O(B * c^2 * Dm * N)`` per chunk instead of
the ``(B, Dm, L, N)`` tensor the reference materialises. Everything runs in float32
(float64 stays float64) and the output is cast back to the input dtype.

:func:`selective_scan_reference` is the token-by-token loop every fast path is
tested against.

Layout: sequences are ``(batch, L, ...)`` (the layout of ``nn.Linear`` outputs):
``u, delta, z``: ``(b, L, Dm)``; ``A``: ``(Dm, N)``; ``B, C``: ``(b, L, G, N)``;
``D``: ``(Dm,)``; states ``(b, Dm, N)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import Tensor


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _check(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor) -> tuple[int, int, int, int, int]:
    if u.dim() != 3 or delta.shape != u.shape:
        raise ValueError(f"selective_scan: u and delta must both be (b, L, Dm), got {tuple(u.shape)} "
                         f"and {tuple(delta.shape)}")
    b, L, Dm = u.shape
    if A.dim() != 2 or A.shape[0] != Dm:
        raise ValueError(f"selective_scan: A must be (Dm, N) = ({Dm}, N), got {tuple(A.shape)}")
    N = A.shape[1]
    if B.dim() != 4 or B.shape[:2] != (b, L) or B.shape[3] != N or C.shape != B.shape:
        raise ValueError(f"selective_scan: B and C must be (b, L, G, N) = ({b}, {L}, G, {N}), "
                         f"got {tuple(B.shape)} and {tuple(C.shape)}")
    G = B.shape[2]
    if Dm % G != 0:
        raise ValueError(f"selective_scan: the {G} groups of B/C must divide the {Dm} channels")
    return b, L, Dm, N, G


def _expand_groups(X: Tensor, Dm: int) -> Tensor:
    """``(b, T, G, N) -> (b, T, Dm, N)``: channel ``d`` reads group ``d // (Dm / G)``."""
    b, T, G, N = X.shape
    return X.unsqueeze(3).expand(b, T, G, Dm // G, N).reshape(b, T, Dm, N)


def _finish(y: Tensor, u: Tensor, D: Tensor | None, z: Tensor | None, out_dtype) -> Tensor:
    if D is not None:
        y = y + u * D.to(y.dtype)
    if z is not None:
        y = y * F.silu(z.to(y.dtype))
    return y.to(out_dtype)


def _scan_chunk(h: Tensor, d_c: Tensor, u_c: Tensor, A: Tensor, B_c: Tensor, C_c: Tensor
                ) -> tuple[Tensor, Tensor]:
    """One chunk: carried state ``h (b, Dm, N)`` and ``(b, T, ...)`` inputs -> ``(y (b, T, Dm), h')``."""
    T, Dm = d_c.shape[1], d_c.shape[2]
    log_decay = d_c.unsqueeze(-1) * A  # (b, T, Dm, N), <= 0
    cum = torch.cumsum(log_decay, dim=1)  # S_t
    Bc = _expand_groups(B_c, Dm)
    Cc = _expand_groups(C_c, Dm)
    bu = (d_c * u_c).unsqueeze(-1) * Bc  # (b, T, Dm, N)
    # Intra-chunk weights exp(S_t - S_s) for s <= t; masked before exp (no overflow).
    seg = cum.unsqueeze(2) - cum.unsqueeze(1)  # (b, T[t], T[s], Dm, N)
    causal = torch.ones(T, T, dtype=torch.bool, device=d_c.device).tril()
    W = torch.exp(seg.masked_fill(~causal[None, :, :, None, None], float("-inf")))
    y = torch.einsum("btdn,btsdn,bsdn->btd", Cc, W, bu)
    y = y + torch.einsum("btdn,bdn->btd", Cc * torch.exp(cum), h)  # the carried state
    last = cum[:, -1]  # (b, Dm, N)
    h = torch.exp(last) * h + (torch.exp(last.unsqueeze(1) - cum) * bu).sum(1)
    return y, h


def selective_scan(
    u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor,
    D: Tensor | None = None, z: Tensor | None = None, *,
    initial_state: Tensor | None = None, chunk_size: int = 16, return_state: bool = False,
    checkpoint: bool = True,
) -> Tensor | tuple[Tensor, Tensor]:
    """Chunked parallel selective scan. Equals :func:`selective_scan_reference`.

    Args:
        u: ``(b, L, Dm)`` inputs; delta: ``(b, L, Dm)`` step sizes (already
            ``softplus(. + bias)``; a zero step leaves the state unchanged).
        A: ``(Dm, N)`` (negative real); B, C: ``(b, L, G, N)``; D: ``(Dm,)`` skip;
        z: ``(b, L, Dm)`` gate (``y *= silu(z)``).
        initial_state: ``(b, Dm, N)`` state before the first token.
        chunk_size: tokens per chunk ``c`` (time ``O(L c Dm N)``, memory ``O(b c^2 Dm N)``).
        return_state: also return the state after the last token (float32/64).
        checkpoint: when gradients are needed, recompute each chunk in the backward
            pass (``torch.utils.checkpoint``) so autograd keeps only the chunk inputs
            and carried states, ``O(b L Dm + b (L / c) Dm N)``, instead of every
            chunk's ``(b, c, c, Dm, N)`` weights.
    Returns:
        ``(b, L, Dm)`` in ``u.dtype`` (and the final ``(b, Dm, N)`` state).
    """
    b, L, Dm, N, G = _check(u, delta, A, B, C)
    if chunk_size <= 0:
        raise ValueError(f"selective_scan: chunk_size must be positive, got {chunk_size}")
    cd = _compute_dtype(u.dtype)
    uf, df, Af, Bf, Cf = (t.to(cd) for t in (u, delta, A, B, C))
    h = (torch.zeros(b, Dm, N, device=u.device, dtype=cd) if initial_state is None
         else initial_state.to(cd))
    use_ckpt = checkpoint and torch.is_grad_enabled() and any(
        t.requires_grad for t in (u, delta, A, B, C, h))
    ys = []
    for start in range(0, L, chunk_size):
        end = min(start + chunk_size, L)
        args = (h, df[:, start:end], uf[:, start:end], Af, Bf[:, start:end], Cf[:, start:end])
        if use_ckpt:
            y, h = torch.utils.checkpoint.checkpoint(_scan_chunk, *args, use_reentrant=False)
        else:
            y, h = _scan_chunk(*args)
        ys.append(y)
    y = torch.cat(ys, dim=1) if ys else uf * 0.0
    out = _finish(y, uf, D, z, u.dtype)
    return (out, h) if return_state else out


def selective_scan_reference(
    u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor,
    D: Tensor | None = None, z: Tensor | None = None, *,
    initial_state: Tensor | None = None, return_state: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """Token-by-token loop of the recurrence (the oracle); same arguments as :func:`selective_scan`."""
    b, L, Dm, N, G = _check(u, delta, A, B, C)
    cd = _compute_dtype(u.dtype)
    uf, df, Af, Bf, Cf = (t.to(cd) for t in (u, delta, A, B, C))
    h = (torch.zeros(b, Dm, N, device=u.device, dtype=cd) if initial_state is None
         else initial_state.to(cd))
    ys = []
    for t in range(L):
        Bt = _expand_groups(Bf[:, t:t + 1], Dm)[:, 0]
        Ct = _expand_groups(Cf[:, t:t + 1], Dm)[:, 0]
        h = torch.exp(df[:, t].unsqueeze(-1) * Af) * h + (df[:, t] * uf[:, t]).unsqueeze(-1) * Bt
        ys.append((h * Ct).sum(-1))
    y = torch.stack(ys, dim=1) if ys else uf * 0.0
    out = _finish(y, uf, D, z, u.dtype)
    return (out, h) if return_state else out


def selective_scan_step(
    u_t: Tensor, delta_t: Tensor, A: Tensor, B_t: Tensor, C_t: Tensor, state: Tensor,
    D: Tensor | None = None, z_t: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """One token: ``u_t, delta_t, z_t``: ``(b, Dm)``; ``B_t, C_t``: ``(b, G, N)``; state ``(b, Dm, N)``.

    Returns ``((b, Dm) in u_t.dtype, new state)``.
    """
    cd = _compute_dtype(u_t.dtype)
    Dm = u_t.shape[-1]
    uf, df = u_t.to(cd), delta_t.to(cd)
    Bt = _expand_groups(B_t.to(cd).unsqueeze(1), Dm)[:, 0]
    Ct = _expand_groups(C_t.to(cd).unsqueeze(1), Dm)[:, 0]
    h = torch.exp(df.unsqueeze(-1) * A.to(cd)) * state.to(cd) + (df * uf).unsqueeze(-1) * Bt
    y = (h * Ct).sum(-1)
    return _finish(y, uf, D, z_t, u_t.dtype), h
