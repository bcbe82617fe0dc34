"""The selective state-space scan of Mamba (S6): chunked parallel form and its reference.

For every channel ``d`` and state index ``n`` (Gu & Dao, arXiv 2312.00752)::

    h_t[d, n] = exp(delta_t[d] * A[d, n]) * h_{t-1}[d, n] + delta_t[d] * B_t[g(d), n] * u_t[d]
    y_t[d]    = sum_n C_t[g(d), n] * h_t[d, n]  (+ D[d] * u_t[d])  (* silu(z_t[d]))

``exp(delta A)`` is the zero-order hold of ``A``; ``delta * B`` is the Euler step used
by the reference ``selective_scan_ref`` (not the exact ZOH of ``B``), kept for parity.
``g(d) = d // (Dm / G)`` maps a channel to one of ``G`` groups of ``B``/``C``
(``G = 1`` is the original Mamba).

:func:`selective_scan` is a two-level (blocked) parallel scan. A block of tokens is cut
into chunks of ``c`` tokens; the recurrence runs from a zero state inside every chunk at
once (``c`` steps, each on all chunks), the chunk-end states are chained (one step per
chunk), and each token adds its chunk's incoming state times ``exp(S_t)``, with
``S_t = sum_{s <= t} delta_s A`` the cumulative log-decay from the chunk start::

    h_t = exp(S_t) h_0 + local_t,   local_t = decay_t * local_{t-1} + delta_t B_t u_t

Work is ``O(L Dm N)`` (the sequential loop's) in ``c + L / c`` vectorised steps instead
of ``L``. Every factor is a product of decays ``<= 1``, so nothing overflows (the
factorisation ``exp(S_t) * exp(-S_s)`` would, after a few hundred tokens). Mamba-2's
SSD form, the intra-chunk work as one ``(c, c)`` matrix product, needs a decay shared by
all state indices of a head; S6's ``A`` is ``(Dm, N)``, so its ``(c, c)`` weights would
be one per ``(channel, state)`` pair, ``c`` times this form's work. Blocks of
``block_size`` tokens run one after another carrying the state (with activation
checkpointing per block when training), so memory is ``O(b * block * Dm * N)``.
Everything runs in float32 (float64 stays float64) and the output is cast back.

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

from .heads import compute_dtype


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


def _scan_block(h0: Tensor, d: Tensor, u: Tensor, A: Tensor, B: Tensor, C: Tensor, chunk_size: int
                ) -> tuple[Tensor, Tensor]:
    """One block of ``T`` tokens from state ``h0 (b, Dm, N)``: ``(y (b, T, Dm), state after it)``.

    Two levels. The block is cut into ``K`` chunks of ``c`` tokens; (1) the recurrence
    runs from a zero state inside *every chunk at once* (``c`` steps on
    ``(b, K, Dm, N)`` tensors); (2) the ``K`` chunk-end states are chained
    (``K`` steps on ``(b, Dm, N)``); (3) each token adds its chunk's incoming state
    times the decay since the chunk start, ``exp(cumsum(delta A))``. Every factor is
    a product of decays ``<= 1``: nothing can overflow, and an underflow to 0 is the
    true (negligible) value.
    """
    b, T, Dm = d.shape
    N, G = A.shape[1], B.shape[2]
    c = min(chunk_size, T)
    pad = (-T) % c
    if pad:  # zero steps: identity decay, no input (their outputs are dropped)
        d, u, B, C = (F.pad(t, (0, 0) * (t.dim() - 2) + (0, pad)) for t in (d, u, B, C))
    K = (T + pad) // c
    Eg = Dm // G
    # Step-major (b, c, K, G, Dm / G, N) tensors, so step t of every chunk is one contiguous
    # slice; the transposes act on the small (b, T, Dm) inputs, channels are split by group
    # so B and C broadcast. unbind (not indexing) makes autograd stack the step gradients
    # instead of scattering each into a zero tensor of full size.
    step_major = lambda t: t.reshape(b, K, c, *t.shape[2:]).transpose(1, 2)  # noqa: E731
    Ag = A.view(G, Eg, N)
    dg = d.view(b, T + pad, G, Eg)
    decays = torch.exp(step_major(dg).unsqueeze(-1) * Ag).unbind(1)  # c x (b, K, G, Eg, N), <= 1
    inps = (step_major((d * u).view(b, T + pad, G, Eg)).unsqueeze(-1)
            * step_major(B).unsqueeze(-2)).unbind(1)  # delta_t u_t B_t
    Cs = step_major(C).unsqueeze(-2).unbind(1)  # c x (b, K, G, 1, N)
    # (1) every chunk from a zero state, all chunks at once: the chunk-end local states
    h = torch.zeros_like(inps[0])
    for t in range(c):
        h = decays[t] * h + inps[t]
    ends = h.unbind(1)
    chunk_decays = torch.exp(dg.view(b, K, c, G, Eg).sum(2).unsqueeze(-1) * Ag).unbind(1)
    # (2) chain them: the state entering each chunk
    h = h0.view(b, G, Eg, N)
    entering = []
    for k in range(K):
        entering.append(h)
        h = chunk_decays[k] * h + ends[k]
    # (3) rerun every chunk from its entering state; y_t = C_t . h_t
    s_t = torch.stack(entering, dim=1)  # (b, K, G, Eg, N)
    ys = []
    for t in range(c):
        s_t = decays[t] * s_t + inps[t]
        ys.append((s_t * Cs[t]).sum(-1))
    y = torch.stack(ys, dim=2).reshape(b, K * c, Dm)[:, :T]  # (b, K, c, G, Eg) -> (b, T, Dm)
    return y, h.reshape(b, Dm, N)


def selective_scan(
    u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor,
    D: Tensor | None = None, z: Tensor | None = None, *,
    initial_state: Tensor | None = None, chunk_size: int = 16, block_size: int = 256,
    return_state: bool = False, checkpoint: bool = True,
) -> Tensor | tuple[Tensor, Tensor]:
    """Chunked parallel selective scan. Equals :func:`selective_scan_reference`.

    Args:
        u: ``(b, L, Dm)`` inputs; delta: ``(b, L, Dm)`` step sizes (already
            ``softplus(. + bias)``; a zero step leaves the state unchanged).
        A: ``(Dm, N)`` (negative real); B, C: ``(b, L, G, N)``; D: ``(Dm,)`` skip;
        z: ``(b, L, Dm)`` gate (``y *= silu(z)``).
        initial_state: ``(b, Dm, N)`` state before the first token.
        chunk_size: tokens per chunk ``c`` of the two-level scan (``c`` vectorised steps
            inside the chunks, then one step per chunk; ``sqrt(block_size)`` is about optimal).
        block_size: tokens per block; blocks run one after another carrying the state, so
            the ``(b, block, Dm, N)`` intermediates bound the memory.
        return_state: also return the state after the last token (float32/64).
        checkpoint: when gradients are needed, recompute each block in the backward
            pass (``torch.utils.checkpoint``) so autograd keeps only the block inputs
            and carried states, ``O(b L Dm + b (L / block) Dm N)``, instead of every
            block's ``(b, block, Dm, N)`` states.
    Returns:
        ``(b, L, Dm)`` in ``u.dtype`` (and the final ``(b, Dm, N)`` state).
    """
    b, L, Dm, N, G = _check(u, delta, A, B, C)
    for opt, val in (("chunk_size", chunk_size), ("block_size", block_size)):
        if not isinstance(val, int) or val <= 0:
            raise ValueError(f"selective_scan: {opt} must be a positive integer, got {val!r}")
    cd = compute_dtype(u.dtype)
    uf, df, Af, Bf, Cf = (t.to(cd) for t in (u, delta, A, B, C))
    h = (torch.zeros(b, Dm, N, device=u.device, dtype=cd) if initial_state is None
         else initial_state.to(cd))
    use_ckpt = checkpoint and torch.is_grad_enabled() and any(
        t.requires_grad for t in (u, delta, A, B, C, h))
    ys = []
    for start in range(0, L, block_size):
        end = min(start + block_size, L)
        args = (h, df[:, start:end], uf[:, start:end], Af, Bf[:, start:end], Cf[:, start:end], chunk_size)
        if use_ckpt:
            y, h = torch.utils.checkpoint.checkpoint(_scan_block, *args, use_reentrant=False)
        else:
            y, h = _scan_block(*args)
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
    cd = compute_dtype(u.dtype)
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
    cd = compute_dtype(u_t.dtype)
    Dm = u_t.shape[-1]
    uf, df = u_t.to(cd), delta_t.to(cd)
    Bt = _expand_groups(B_t.to(cd).unsqueeze(1), Dm)[:, 0]
    Ct = _expand_groups(C_t.to(cd).unsqueeze(1), Dm)[:, 0]
    h = torch.exp(df.unsqueeze(-1) * A.to(cd)) * state.to(cd) + (df * uf).unsqueeze(-1) * Bt
    y = (h * Ct).sum(-1)
    return _finish(y, uf, D, z_t, u_t.dtype), h
