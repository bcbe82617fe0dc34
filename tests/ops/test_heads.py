import pytest
import torch

from wersa.ops.heads import compute_dtype, merge_heads, split_heads


def test_split_then_merge_is_identity_and_heads_are_contiguous_slices():
    x = torch.randn(2, 5, 12)
    h = split_heads(x, 3)
    assert h.shape == (2, 3, 5, 4)
    assert torch.equal(h[:, 1], x[..., 4:8])  # head i is the i-th slice of width d
    assert torch.equal(merge_heads(h), x)


@pytest.mark.parametrize("dtype,expected", [(torch.float16, torch.float32), (torch.bfloat16, torch.float32),
                                            (torch.float32, torch.float32), (torch.float64, torch.float64)])
def test_compute_dtype(dtype, expected):
    assert compute_dtype(dtype) is expected
