"""The exact softmax reference and the LSE merge."""

import torch
import torch.nn.functional as F

from wersa.ops.softmax_attention import merge_attention, softmax_attention_reference


def test_reference_matches_sdpa_with_masks():
    q, k, v = (torch.randn(2, 3, 9, 4, dtype=torch.float64) for _ in range(3))
    for causal in (False, True):
        assert torch.allclose(softmax_attention_reference(q, k, v, causal=causal),
                              F.scaled_dot_product_attention(q, k, v, is_causal=causal), atol=1e-12)
    mask = torch.ones(2, 9, dtype=torch.bool)
    mask[0, 6:] = False
    ref = softmax_attention_reference(q, k, v, key_mask=mask)
    sd = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None, None, :])
    assert torch.allclose(ref, sd, atol=1e-12)


def test_bottom_right_alignment_for_cached_decoding():
    q = torch.randn(1, 1, 1, 4, dtype=torch.float64)
    k, v = torch.randn(1, 1, 6, 4, dtype=torch.float64), torch.randn(1, 1, 6, 4, dtype=torch.float64)
    assert torch.allclose(softmax_attention_reference(q, k, v, causal=True),
                          softmax_attention_reference(q, k, v, causal=False))


def test_fully_masked_rows_are_zero_and_finite():
    q, k, v = (torch.randn(1, 1, 3, 2) for _ in range(3))
    out, lse = softmax_attention_reference(q, k, v, key_mask=torch.zeros(1, 3, dtype=torch.bool), return_lse=True)
    assert torch.equal(out, torch.zeros_like(out)) and torch.isinf(lse).all()


def test_merge_of_disjoint_key_sets_is_exact():
    q = torch.randn(2, 2, 5, 4, dtype=torch.float64)
    k, v = torch.randn(2, 2, 11, 4, dtype=torch.float64), torch.randn(2, 2, 11, 4, dtype=torch.float64)
    o1, l1 = softmax_attention_reference(q, k[:, :, :4], v[:, :, :4], return_lse=True)
    o2, l2 = softmax_attention_reference(q, k[:, :, 4:], v[:, :, 4:], return_lse=True)
    out, lse = merge_attention(o1, l1, o2, l2)
    full, full_lse = softmax_attention_reference(q, k, v, return_lse=True)
    assert torch.allclose(out, full, atol=1e-12) and torch.allclose(lse, full_lse, atol=1e-12)
