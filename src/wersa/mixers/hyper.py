"""HyperAttention: sortLSH block attention plus sampled residual keys, merged by log-sum-exp.

Reference: Han, Jayaram, Karbasi, Mirrokni, Woodruff, Zandieh, "HyperAttention:
Long-context Attention in Near-Linear Time", ICLR 2024, arXiv 2310.05869; code
``insuhan/hyper-attn`` (``hyper_attn.py``, ``angular_lsh.py``, ``utils.py``).

Per head, queries ``q``, keys ``k``, values ``v`` (``(B, H, n, d)``), scale ``s = d^-1/2``.

Non-causal path (``n_q < min_seq_len``: exact softmax attention)::

    bucket(x) = rank in the reflected Gray sequence of  sum_t [x P_t > 0] 2^t   # P: (d, r) Gaussian
    sort q and k (stably) by bucket; v follows k
    block part:   sorted keys in blocks of b = window_size (the last one padded, pads masked);
                  queries in as many blocks (ceil(n_q / n_blocks) each); query block i attends
                  to key block i exactly                                         -> (out1, lse1)
    sample part:  m = sample_size sorted-key positions drawn uniformly with replacement;
                  every query attends to them, samples from its own block masked to -inf,
                  lse2 += log(n_k / m)   (unbiased for the out-of-block sum)    -> (out2, lse2)
    out = merge_attention(out1, lse1, out2, lse2); unsort the query rows

Causal path (the reference's recursion): if ``n <= min_seq_len``, exact causal attention.
Otherwise pad ``n`` to even with a zero row at the end, view the two halves as extra
heads ``(B, 2H, n/2, d)`` and recurse causally on them (the diagonal blocks), compute
second-half queries x first-half keys with the non-causal path, LSE-merge that into
the second half, and drop the pad row. Deviation from the reference, needed for
causality: in that off-diagonal part the reference cuts the *sorted queries* into
blocks, so which key block query ``t`` sees depends on the buckets of the later
queries of its half (a leak from the future through block membership). Here each
off-diagonal query is assigned on its own to the key block where its bucket falls in
the sorted keys (``searchsorted``), so output ``t`` depends on inputs ``<= t`` only. A pad row sits at the end of its segment, so
under the causal mask only the pad query itself ever sees it.

Defaults (the reference's): ``lsh_num_projs = 7``, ``window_size = 256``,
``sample_size = 256``, ``min_seq_len = 4096``. Cost per head for ``n >= min_seq_len``:
``O(n log n)`` sorts + ``O(n b d)`` blocks + ``O(n m d)`` samples; the causal recursion adds
a ``log n`` factor. Below ``min_seq_len`` it is exact attention (``O(n^2)``), which is
also what makes it deterministic at small sizes.

Randomness: the projection ``P`` is drawn from ``seed`` and stored as a persistent
buffer (saved with the model). Samples come from a ``torch.Generator``: in eval mode
it is re-seeded with ``seed`` at every call, so a module in eval mode is a
deterministic function of its input; in training mode one generator (seeded once)
keeps advancing, so each step sees fresh samples. Sample positions are shared across
the batch (drawn per head).

Padding: below ``min_seq_len`` padded keys are masked in the exact attention. At or
above it, each padded row is compacted to its real tokens and processed alone, so
padded keys are never bucketed, blocked or sampled, and (in eval mode) the outputs at
real positions equal those of the unpadded sequence for left and right padding.

Pitfalls of the reference code avoided here: its fp32 path ignores the in-block mask
of the samples (double counting in-block keys) -- the mask is applied in every dtype;
its zero-padded last key block is not masked (logit 0 inflates the normaliser) -- pads
are masked; its ``P`` is a non-persistent buffer redrawn at each construction -- here
seeded and saved; its fp16/bf16 path detaches the LSE -- gradients flow through the
merge. Attention is computed in float32 for fp16/bf16 inputs.
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import Tensor, nn

from ..ops.heads import compute_dtype
from ..ops.softmax_attention import merge_attention, softmax_attention_reference
from .base import Capabilities, Mixer
from .registry import register_mixer


def gray_rank_table(num_bits: int) -> Tensor:
    """``(2^r,)`` long: position of each ``r``-bit code in the reflected Gray sequence.

    Sorting buckets by this rank puts codes that differ in one hyperplane side by side.
    """
    codes = torch.arange(2 ** num_bits)
    gray = codes ^ (codes >> 1)  # the i-th Gray code
    rank = torch.empty_like(codes)
    rank[gray] = codes
    return rank


def lsh_buckets(x: Tensor, proj: Tensor, rank_table: Tensor) -> Tensor:
    """Angular LSH buckets. ``x``: ``(..., n, d)``; ``proj``: ``(d, r)`` -> ``(..., n)`` long."""
    bits = (x @ proj.to(x.dtype)) > 0  # (..., n, r)
    weights = 2 ** torch.arange(proj.shape[-1], device=x.device)
    return rank_table[(bits.long() * weights).sum(-1)]


def _block_attention_per_query(q: Tensor, blk: Tensor, kb: Tensor, vb: Tensor, key_real: Tensor,
                               scale: float) -> tuple[Tensor, Tensor]:
    """Each query attends to its own key block. q: ``(B, H, c, d)``; blk: ``(B, H, c)``;
    kb, vb: ``(B, H, nb, b, d)``; key_real: ``(nb, b)`` bool -> ``(out (B, H, c, d), lse (B, H, c))``."""
    Bsz, H, c, d = q.shape
    b = kb.shape[3]
    gidx = blk[..., None, None].expand(Bsz, H, c, b, d)
    kg, vg = kb.gather(2, gidx), vb.gather(2, gidx)  # (B, H, c, b, d)
    scores = torch.einsum("bhcd,bhcjd->bhcj", q, kg) * scale
    scores = scores.masked_fill(~key_real[blk], float("-inf"))
    lse = torch.logsumexp(scores, dim=-1)
    out = torch.einsum("bhcj,bhcjd->bhcd", torch.softmax(scores, dim=-1), vg)
    return out, lse


def hyper_attention_noncausal(
    q: Tensor, k: Tensor, v: Tensor, proj: Tensor, rank_table: Tensor, *,
    window_size: int, sample_size: int, generator: torch.Generator | None, scale: float,
    per_query: bool = False, query_chunk: int = 256,
) -> tuple[Tensor, Tensor]:
    """The sortLSH + sampling approximation (no size threshold here).

    Args:
        q: ``(B, H, n_q, d)``; k, v: ``(B, H, n_k, d)`` (no padding: compact rows first).
        generator: source of the sample positions (CPU generator; ``None`` = global RNG).
        per_query: assign each query on its own to the key block where its bucket falls
            in the sorted keys, instead of cutting the sorted queries into equal blocks
            (the reference). Then a query's output depends on itself and the keys only,
            never on the other queries, which the causal recursion needs. Queries are
            processed ``query_chunk`` at a time (checkpointed when training), so memory
            stays ``O(query_chunk * b * d)``.
    Returns:
        ``(out (B, H, n_q, d), lse (B, H, n_q))``.
    """
    Bsz, H, nq, d = q.shape
    nk = k.shape[2]
    k_buckets = lsh_buckets(k, proj, rank_table)
    k_order = torch.argsort(k_buckets, dim=-1, stable=True)
    ks = k.gather(2, k_order.unsqueeze(-1).expand_as(k))
    vs = v.gather(2, k_order.unsqueeze(-1).expand_as(v))

    b = min(window_size, nk)
    n_blocks = math.ceil(nk / b)
    pad_k = n_blocks * b - nk
    kb = F.pad(ks, (0, 0, 0, pad_k)).reshape(Bsz, H, n_blocks, b, d)
    vb = F.pad(vs, (0, 0, 0, pad_k)).reshape(Bsz, H, n_blocks, b, d)
    key_real = (torch.arange(n_blocks * b, device=q.device) < nk).reshape(n_blocks, b)

    if per_query:
        sorted_kbk = k_buckets.gather(2, k_order).contiguous()
        q_buckets = lsh_buckets(q, proj, rank_table).contiguous()
        q_block = (torch.searchsorted(sorted_kbk, q_buckets) // b).clamp(max=n_blocks - 1)  # (B, H, nq)
        use_ckpt = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v))
        outs, lses = [], []
        for s in range(0, nq, query_chunk):
            args = (q[:, :, s:s + query_chunk], q_block[:, :, s:s + query_chunk], kb, vb, key_real, scale)
            if use_ckpt:
                o, l = torch.utils.checkpoint.checkpoint(_block_attention_per_query, *args, use_reentrant=False)
            else:
                o, l = _block_attention_per_query(*args)
            outs.append(o)
            lses.append(l)
        qs, out1, lse1 = q, torch.cat(outs, 2), torch.cat(lses, 2)
        q_order = None
    else:
        # The reference: sorted queries cut into n_blocks equal blocks; block i sees key block i.
        q_order = torch.argsort(lsh_buckets(q, proj, rank_table), dim=-1, stable=True)
        qs = q.gather(2, q_order.unsqueeze(-1).expand_as(q))
        bq = math.ceil(nq / n_blocks)
        pad_q = n_blocks * bq - nq
        qb = F.pad(qs, (0, 0, 0, pad_q)).reshape(Bsz, H, n_blocks, bq, d)
        scores = (qb @ kb.transpose(-1, -2)) * scale  # (B, H, nb, bq, b)
        if pad_k:
            scores = scores.masked_fill(~key_real[:, None, :], float("-inf"))  # pads never count
        lse1 = torch.logsumexp(scores, dim=-1).reshape(Bsz, H, n_blocks * bq)[:, :, :nq]
        out1 = (torch.softmax(scores, dim=-1) @ vb).reshape(Bsz, H, n_blocks * bq, d)[:, :, :nq]
        q_block = (torch.arange(nq, device=q.device) // bq).expand(Bsz, H, nq)

    if sample_size > 0:
        idx = torch.randint(0, nk, (H, sample_size), generator=generator).to(q.device)  # (H, m)
        gidx = idx[None, :, :, None].expand(Bsz, H, sample_size, d)
        k_smp, v_smp = ks.gather(2, gidx), vs.gather(2, gidx)
        s2 = (qs @ k_smp.transpose(-1, -2)) * scale  # (B, H, nq, m)
        same_block = q_block.unsqueeze(-1) == (idx // b)[None, :, None, :]  # (B, H, nq, m)
        s2 = s2.masked_fill(same_block, float("-inf"))  # in every dtype
        lse2 = torch.logsumexp(s2, dim=-1)
        safe = torch.where(torch.isfinite(lse2), lse2, torch.zeros_like(lse2))
        out2 = torch.exp(s2 - safe.unsqueeze(-1)) @ v_smp
        lse2 = lse2 + math.log(nk / sample_size)
        out1, lse1 = merge_attention(out1, lse1, out2, lse2)

    if q_order is None:
        return out1, lse1
    inv = torch.argsort(q_order, dim=-1)
    return out1.gather(2, inv.unsqueeze(-1).expand_as(out1)), lse1.gather(2, inv)


def hyper_attention_reference(
    q: Tensor, k: Tensor, v: Tensor, proj: Tensor, rank_table: Tensor, *,
    window_size: int, sample_size: int, generator: torch.Generator | None, scale: float,
    per_query: bool = False,
) -> tuple[Tensor, Tensor]:
    """Dense ``O(n_q n_k)`` form of :func:`hyper_attention_noncausal` (same arguments).

    The approximation is one softmax over all keys with multiplicities::

        c_ij = [block(j) = block(i)] + (n_k / m) #{t : sample t is key j, block(j) != block(i)}
        out_i = sum_j c_ij exp(s_ij) v_j / sum_j c_ij exp(s_ij),   lse_i = log sum_j c_ij exp(s_ij)

    with ``block(j)`` = sorted position of key ``j`` // ``b`` and ``block(i)`` the query's
    block (its sorted rank // ``ceil(n_q / n_blocks)``, or with ``per_query`` the key block
    where its bucket falls). Samples are drawn from ``generator`` exactly as the fast path.
    """
    Bsz, H, nq, d = q.shape
    nk = k.shape[2]
    k_buckets = lsh_buckets(k, proj, rank_table)
    k_order = torch.argsort(k_buckets, dim=-1, stable=True)
    k_pos = torch.argsort(k_order, dim=-1)  # sorted position of each key
    b = min(window_size, nk)
    n_blocks = math.ceil(nk / b)
    key_block = k_pos // b  # (B, H, nk)
    q_buckets = lsh_buckets(q, proj, rank_table)
    if per_query:
        sorted_kb = k_buckets.gather(2, k_order).contiguous()
        q_block = (torch.searchsorted(sorted_kb, q_buckets.contiguous()) // b).clamp(max=n_blocks - 1)
    else:
        q_rank = torch.argsort(torch.argsort(q_buckets, dim=-1, stable=True), dim=-1)
        q_block = q_rank // math.ceil(nq / n_blocks)
    same = q_block.unsqueeze(-1) == key_block.unsqueeze(-2)  # (B, H, nq, nk)
    count = same.to(q.dtype)
    if sample_size > 0:
        idx = torch.randint(0, nk, (H, sample_size), generator=generator).to(q.device)
        hits = torch.zeros(H, nk, dtype=q.dtype, device=q.device)
        hits.scatter_add_(1, idx, torch.ones_like(idx, dtype=q.dtype))  # per sorted position
        hits_key = hits.expand(Bsz, H, nk).gather(2, k_pos)  # per key
        count = count + (~same).to(q.dtype) * hits_key.unsqueeze(-2) * (nk / sample_size)
    logits = (q @ k.transpose(-1, -2)) * scale + torch.log(count)  # log 0 = -inf: key unused
    return torch.softmax(logits, dim=-1) @ v, torch.logsumexp(logits, dim=-1)


def hyper_attention_causal_reference(
    q: Tensor, k: Tensor, v: Tensor, proj: Tensor, rank_table: Tensor, *, min_seq_len: int,
    window_size: int, sample_size: int, generator: torch.Generator | None, scale: float,
) -> tuple[Tensor, Tensor]:
    """The causal recursion of :class:`HyperAttention` on dense pieces: exact causal softmax up to
    ``min_seq_len`` tokens, else halves as heads (recursively) plus the second half's queries
    against the first half's keys by :func:`hyper_attention_reference` (``per_query``; exact
    attention when the half has fewer than ``min_seq_len`` tokens), the two
    merged by their log-sum-exp weights. Draws samples in the fast path's order."""
    Bsz, H, n, d = q.shape
    if n <= min_seq_len:
        return softmax_attention_reference(q, k, v, causal=True, scale=scale, return_lse=True)
    odd = n % 2
    if odd:
        q, k, v = (F.pad(t, (0, 0, 0, 1)) for t in (q, k, v))
    h = (n + odd) // 2
    out, lse = hyper_attention_causal_reference(
        *(t.reshape(Bsz, 2 * H, h, d) for t in (q, k, v)), proj, rank_table, min_seq_len=min_seq_len,
        window_size=window_size, sample_size=sample_size, generator=generator, scale=scale)
    out, lse = out.reshape(Bsz, H, 2, h, d), lse.reshape(Bsz, H, 2, h)
    if h < min_seq_len:  # the off-diagonal part is exact below min_seq_len queries, as the fast path
        o2, l2 = softmax_attention_reference(q[:, :, h:], k[:, :, :h], v[:, :, :h], scale=scale, return_lse=True)
    else:
        o2, l2 = hyper_attention_reference(q[:, :, h:], k[:, :, :h], v[:, :, :h], proj, rank_table,
                                           window_size=window_size, sample_size=sample_size,
                                           generator=generator, scale=scale, per_query=True)
    l1 = lse[:, :, 1]
    top = torch.logaddexp(l1, l2)
    second = (torch.exp(l1 - top).unsqueeze(-1) * out[:, :, 1] + torch.exp(l2 - top).unsqueeze(-1) * o2)
    return (torch.cat([out[:, :, 0], second], 2)[:, :, :n], torch.cat([lse[:, :, 0], top], 2)[:, :, :n])


@register_mixer
class HyperAttention(Mixer):
    """HyperAttention with its own q/k/v/out projections: ``(B, N, D) -> (B, N, D)``."""

    example_options = (
        {"min_seq_len": 16, "window_size": 8, "sample_size": 8, "lsh_num_projs": 3},
        {"min_seq_len": 4096},  # every test length on the exact path
    )
    capabilities = Capabilities(
        name="hyper", causal=True, bidirectional=True, attention_mask=True, left_padding=True,
        recurrent=False, linear_time=True,
        summary="HyperAttention: sortLSH block attention + uniformly sampled keys, LSE-merged; "
                "O(n log n) (not strictly linear), exact below min_seq_len; causal by recursive halving",
        reference="Han et al., HyperAttention: Long-context Attention in Near-Linear Time, "
                  "ICLR 2024, arXiv 2310.05869",
    )

    renamed_options = {"block_size": "window_size", "bias": ("qkv_bias", "out_bias")}
    renamed_parameters = {"out.": "out_proj."}

    @classmethod
    def capabilities_for(cls, causal: bool = False, **options) -> Capabilities:
        """Below ``min_seq_len`` (causal: up to it) the instance runs exact, quadratic attention."""
        msl = options.get("min_seq_len", 4096)
        return dataclasses.replace(cls.capabilities, quadratic_below=msl + 1 if causal else msl)

    def regime(self, n: int) -> str:
        """Which computation runs for a length-``n`` sequence: ``"exact"`` (quadratic softmax
        attention) or ``"lsh"`` (sortLSH blocks + sampled keys; causal: the recursion, whose
        diagonal blocks of at most ``min_seq_len`` tokens are exact)."""
        return "exact" if n < self.capabilities.quadratic_below else "lsh"

    def __init__(
        self, dim: int, num_heads: int, causal: bool = False, *,
        lsh_num_projs: int = 7, window_size: int = 256, sample_size: int = 256,
        min_seq_len: int = 4096, seed: int = 0, qkv_bias: bool = True, out_bias: bool = True,
    ):
        super().__init__(dim, num_heads, causal)
        name = self.capabilities.name
        for opt, val, low in (("lsh_num_projs", lsh_num_projs, 1), ("window_size", window_size, 1),
                              ("sample_size", sample_size, 0), ("min_seq_len", min_seq_len, 1)):
            if not isinstance(val, int) or isinstance(val, bool) or val < low:
                raise ValueError(f"{name}: {opt} must be an integer >= {low}, got {val!r}")
        if lsh_num_projs > 20:
            raise ValueError(f"{name}: lsh_num_projs={lsh_num_projs} gives 2^{lsh_num_projs} buckets; use <= 20")
        if not isinstance(seed, int):
            raise ValueError(f"{name}: seed must be an integer, got {seed!r}")
        self.lsh_num_projs, self.window_size, self.sample_size = lsh_num_projs, window_size, sample_size
        self.min_seq_len, self.seed = min_seq_len, seed
        self.capabilities = type(self).capabilities_for(causal=causal, min_seq_len=min_seq_len)
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.out_proj = nn.Linear(dim, dim, bias=out_bias)
        gen = torch.Generator().manual_seed(seed)
        self.register_buffer("lsh_proj", torch.randn(self.head_dim, lsh_num_projs, generator=gen))
        self.register_buffer("gray_rank", gray_rank_table(lsh_num_projs), persistent=False)
        self._train_generator = torch.Generator().manual_seed(seed + 1)

    # ------------------------------------------------------------- attention
    def _generator(self) -> torch.Generator:
        if self.training:
            return self._train_generator
        return torch.Generator().manual_seed(self.seed + 1)

    def _noncausal(self, q: Tensor, k: Tensor, v: Tensor, gen: torch.Generator,
                   per_query: bool = False) -> tuple[Tensor, Tensor]:
        if q.shape[2] < self.min_seq_len:
            return softmax_attention_reference(q, k, v, return_lse=True)
        return hyper_attention_noncausal(
            q, k, v, self.lsh_proj, self.gray_rank, window_size=self.window_size,
            sample_size=self.sample_size, generator=gen, scale=q.shape[-1] ** -0.5,
            per_query=per_query)

    def _causal(self, q: Tensor, k: Tensor, v: Tensor, gen: torch.Generator) -> tuple[Tensor, Tensor]:
        Bsz, H, n, d = q.shape
        if n <= self.min_seq_len:
            return softmax_attention_reference(q, k, v, causal=True, return_lse=True)
        odd = n % 2
        if odd:  # a zero row at the end: only the pad query sees it under the causal mask
            q, k, v = (F.pad(t, (0, 0, 0, 1)) for t in (q, k, v))
        h = (n + odd) // 2
        qh, kh, vh = (t.reshape(Bsz, 2 * H, h, d) for t in (q, k, v))  # halves as heads
        out, lse = self._causal(qh, kh, vh, gen)  # diagonal blocks
        out = out.reshape(Bsz, H, 2, h, d)
        lse = lse.reshape(Bsz, H, 2, h)
        off_out, off_lse = self._noncausal(q[:, :, h:], k[:, :, :h], v[:, :, :h], gen, per_query=True)
        second, second_lse = merge_attention(out[:, :, 1], lse[:, :, 1], off_out, off_lse)
        out = torch.cat([out[:, :, 0], second], dim=2)[:, :, :n]
        lse = torch.cat([lse[:, :, 0], second_lse], dim=2)[:, :, :n]
        return out, lse

    def attention(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """Unpadded ``(B, H, n, d)`` heads -> ``(B, H, n, d)`` (exact below ``min_seq_len``)."""
        gen = self._generator()
        fn = self._causal if self.causal else self._noncausal
        return fn(q, k, v, gen)[0]

    # ---------------------------------------------------------------- forward
    def _forward(self, x: Tensor, mask: Tensor | None) -> Tensor:
        Bsz, n, _ = x.shape
        dtype = x.dtype
        q, k, v = self.qkv(x).reshape(Bsz, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = (t.to(compute_dtype(dtype)) for t in (q, k, v))  # softmax sums in float32
        if self.regime(n) == "exact":
            y = softmax_attention_reference(q, k, v, causal=self.causal, key_mask=mask)
        elif mask is None:
            y = self.attention(q, k, v)
        else:
            # Compact each row to its real tokens so pads are never hashed, blocked or sampled.
            y = q.new_zeros(q.shape)
            for row in range(Bsz):
                idx = mask[row].nonzero().squeeze(-1)
                if idx.numel() == 0:
                    continue
                sel = [t[row:row + 1, :, idx] for t in (q, k, v)]
                y[row:row + 1, :, idx] = self.attention(*sel)
        y = y.to(dtype).transpose(1, 2).reshape(Bsz, n, self.dim)
        return self.out_proj(y)

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, lsh_num_projs={self.lsh_num_projs}, window_size={self.window_size}, "
                f"sample_size={self.sample_size}, min_seq_len={self.min_seq_len}, seed={self.seed}")
