import torch

from wersa.ops.compaction import compaction, gather_tokens


def test_real_tokens_first_in_order_and_inverse_restores():
    mask = torch.tensor([[0, 1, 1, 0, 1], [1, 1, 1, 1, 1], [0, 0, 0, 0, 0], [1, 0, 1, 0, 0]]).bool()
    x = torch.arange(20.0).view(4, 5, 1)
    comp = compaction(mask)
    xc = gather_tokens(x, comp.perm)
    assert comp.lengths.tolist() == [3, 5, 0, 2]
    assert xc[0, :3, 0].tolist() == [1.0, 2.0, 4.0]
    assert xc[3, :2, 0].tolist() == [15.0, 17.0]
    assert torch.equal(xc[1], x[1])
    assert torch.equal(gather_tokens(xc, comp.inverse), x)


def test_gather_tokens_trailing_dims():
    x = torch.randn(2, 6, 3, 4)
    comp = compaction(torch.rand(2, 6) > 0.5)
    assert torch.equal(gather_tokens(gather_tokens(x, comp.perm), comp.inverse), x)
