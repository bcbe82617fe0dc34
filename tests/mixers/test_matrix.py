"""The capability-driven test matrix: every registered mixer, every claim it makes.

A new mechanism is tested here by registering it. Each test reads the mixer's
:class:`~wersa.Capabilities` and checks exactly what they promise:

* causality by perturbation (with and without padding, lengths that are and are
  not multiples of block sizes);
* right-padding invariance (``attention_mask``), left-padding invariance in causal
  mode (``left_padding``), all-padding rows finite;
* ``step`` token by token, ``prefill`` + ``step``, and padded steps equal the
  parallel causal output (``recurrent``);
* gradients: ``gradcheck`` in float64, finite in float32 and bfloat16;
* bad input and unsupported requests raise clear errors;
* determinism under a seed, and a ``state_dict`` round trip.
"""

from __future__ import annotations

import pytest
import torch

import wersa

DIM, HEADS, BATCH = 32, 2, 2

NAMES = wersa.list_mixers()


def modes(name: str) -> list[bool]:
    caps = wersa.capabilities(name)
    return [c for c in (False, True) if (caps.causal if c else caps.bidirectional)]


def caps_of(name: str, causal: bool, **opts) -> wersa.Capabilities:
    """The claims of the instance ``build(name, causal, **opts)`` (per instance, not per class)."""
    return wersa.capabilities(name, causal=causal, **opts)


CASES = [pytest.param(n, c, id=f"{n}-{'causal' if c else 'bidir'}") for n in NAMES for c in modes(n)]
CAUSAL = [pytest.param(n, id=n) for n in NAMES if caps_of(n, True).causal and True in modes(n)]
RECURRENT = [pytest.param(n, id=n) for n in NAMES if True in modes(n) and caps_of(n, True).recurrent]
MASKED = [p for p in CASES if caps_of(*p.values).attention_mask]
UNMASKED = [p for p in CASES if not caps_of(*p.values).attention_mask]
LEFT = [pytest.param(n, id=n) for n in NAMES
        if True in modes(n) and caps_of(n, True).left_padding and caps_of(n, True).attention_mask]


def build(name: str, causal: bool, dim: int = DIM, heads: int = HEADS, seed: int = 0, **opts):
    torch.manual_seed(seed)
    return wersa.build_mixer(name, dim=dim, num_heads=heads, causal=causal, **opts).eval()


def x_of(n: int, b: int = BATCH, dim: int = DIM, seed: int = 1, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, n, dim, generator=g, dtype=dtype)


def test_registry_has_the_paper_set():
    for name in ("sdpa", "wersa"):
        assert name in NAMES


# ------------------------------------------------------------------ forward
@pytest.mark.parametrize("name,causal", CASES)
@pytest.mark.parametrize("n", [1, 2, 5, 37])
def test_forward_shape_and_finite(name, causal, n):
    m = build(name, causal)
    x = x_of(n)
    with torch.no_grad():
        y = m(x)
    assert y.shape == x.shape
    assert torch.isfinite(y).all()


@pytest.mark.parametrize("name,causal", CASES)
def test_empty_sequence_gives_empty_output(name, causal):
    m = build(name, causal)
    y = m(x_of(0))
    assert y.shape == (BATCH, 0, DIM)


# ---------------------------------------------------------------- causality
@pytest.mark.parametrize("name", CAUSAL)
@pytest.mark.parametrize("n,t", [(17, 1), (37, 20), (64, 33)])
def test_causal_prefix_invariance(name, n, t):
    m = build(name, True)
    x = x_of(n)
    x2 = x.clone()
    x2[:, t:] += 3.0 * torch.randn_like(x2[:, t:])
    with torch.no_grad():
        d = (m(x2)[:, :t] - m(x)[:, :t]).abs().max().item()
    assert d < 1e-5, f"{name}: outputs before {t} moved by {d:.2e} when later inputs changed"


@pytest.mark.parametrize("name", [p for p in CAUSAL if caps_of(p.values[0], True).attention_mask])
def test_causal_prefix_invariance_with_padding(name):
    m = build(name, True)
    n, t = 30, 13
    x = x_of(n)
    mask = torch.ones(BATCH, n, dtype=torch.bool)
    mask[0, 25:] = False
    x2 = x.clone()
    x2[:, t:] += 3.0 * torch.randn_like(x2[:, t:])
    with torch.no_grad():
        d = (m(x2, attention_mask=mask)[:, :t] - m(x, attention_mask=mask)[:, :t]).abs().max().item()
    assert d < 1e-5


# ------------------------------------------------------------------ padding
@pytest.mark.parametrize("name,causal", MASKED)
@pytest.mark.parametrize("n,pad", [(13, 3), (37, 11)])
def test_right_padding_invariance(name, causal, n, pad):
    m = build(name, causal)
    x = x_of(n)
    xp = torch.cat([x, 5.0 * x_of(pad, seed=9)], dim=1)
    mask = torch.cat([torch.ones(BATCH, n), torch.zeros(BATCH, pad)], dim=1).bool()
    with torch.no_grad():
        y = m(x)
        yp = m(xp, attention_mask=mask)
    assert (yp[:, :n] - y).abs().max().item() < 1e-4
    assert (yp[:, n:] == 0).all(), "outputs at padded positions are zero"


@pytest.mark.parametrize("name,causal", MASKED)
def test_mixed_lengths_in_one_batch(name, causal):
    """Each row of a padded batch equals that row run alone, unpadded."""
    m = build(name, causal)
    lengths = [21, 9]
    x = x_of(21)
    mask = torch.zeros(2, 21, dtype=torch.bool)
    for i, ln in enumerate(lengths):
        mask[i, :ln] = True
    with torch.no_grad():
        y = m(x, attention_mask=mask)
        for i, ln in enumerate(lengths):
            alone = m(x[i:i + 1, :ln])
            assert (y[i, :ln] - alone[0]).abs().max().item() < 1e-4


@pytest.mark.parametrize("name", LEFT)
def test_left_padding_invariance_causal(name):
    m = build(name, True)
    n, pad = 19, 6
    x = x_of(n)
    xp = torch.cat([5.0 * x_of(pad, seed=7), x], dim=1)
    mask = torch.cat([torch.zeros(BATCH, pad), torch.ones(BATCH, n)], dim=1).bool()
    with torch.no_grad():
        d = (m(xp, attention_mask=mask)[:, pad:] - m(x)).abs().max().item()
    assert d < 1e-4


@pytest.mark.parametrize("name,causal", MASKED)
def test_all_padding_rows_are_finite_zero(name, causal):
    m = build(name, causal)
    x = x_of(12)
    mask = torch.ones(BATCH, 12, dtype=torch.bool)
    mask[1] = False
    with torch.no_grad():
        y = m(x, attention_mask=mask)
    assert torch.isfinite(y).all()
    assert (y[1] == 0).all()


# Mixers (or configurations) that cannot apply a padding mask must refuse one.
REFUSING = [pytest.param(*p.values, {}, id=p.id) for p in UNMASKED]


@pytest.mark.parametrize("name,causal,opts", REFUSING)
def test_unsupported_mask_is_refused(name, causal, opts):
    m = build(name, causal, **opts)
    mask = torch.ones(BATCH, 10, dtype=torch.bool)
    mask[0, 7:] = False
    with pytest.raises(ValueError, match=name):
        m(x_of(10), attention_mask=mask)
    m(x_of(10), attention_mask=torch.ones(BATCH, 10))  # an all-ones mask pads nothing: accepted


# --------------------------------------------------------------- recurrence
def run_steps(m, x, mask=None):
    return m.step_through(x, attention_mask=mask)


@pytest.mark.parametrize("name", RECURRENT)
@pytest.mark.parametrize("n", [1, 23])
def test_step_equals_parallel(name, n):
    m = build(name, True)
    x = x_of(n)
    with torch.no_grad():
        y = m(x)
        ys, _ = run_steps(m, x)
    assert (ys - y).abs().max().item() < 1e-4


@pytest.mark.parametrize("name", RECURRENT)
@pytest.mark.parametrize("prompt", [1, 2, 17])  # prompts shorter than any history buffer, and longer
def test_prefill_then_step_equals_parallel(name, prompt):
    m = build(name, True)
    x = x_of(29)
    with torch.no_grad():
        y = m(x)
        yp, state = m.prefill(x[:, :prompt])
        yr, _ = m.step_through(x[:, prompt:], state)
    assert (torch.cat([yp, yr], 1) - y).abs().max().item() < 1e-4


@pytest.mark.parametrize("name", [p for p in RECURRENT if caps_of(p.values[0], True).left_padding])
def test_padded_steps_equal_masked_parallel(name):
    m = build(name, True)
    n, pad = 15, 4
    x = x_of(n + pad)
    mask = torch.ones(BATCH, n + pad, dtype=torch.bool)
    mask[0, :pad] = False  # row 0 left-padded
    with torch.no_grad():
        y = m(x, attention_mask=mask)
        ys, _ = run_steps(m, x, mask)
        yp, state = m.prefill(x[:, :9], attention_mask=mask[:, :9])
        outs = [yp]
        for t in range(9, n + pad):
            o, state = m.step(x[:, t], state, attention_mask=mask[:, t])
            outs.append(o.unsqueeze(1))
    assert (ys - y).abs().max().item() < 1e-4
    assert (torch.cat(outs, 1) - y).abs().max().item() < 1e-4


# Interior padding (a padded position between real tokens): the parallel pass must treat
# it as step does (skipped), or the mixer must refuse such masks.
INTERIOR_KNOWN_FAILING: dict[str, str] = {}


@pytest.mark.parametrize("name", [
    pytest.param(p.values[0], id=p.id, marks=pytest.mark.xfail(reason=INTERIOR_KNOWN_FAILING[p.values[0]],
                                                              strict=True))
    if p.values[0] in INTERIOR_KNOWN_FAILING else p
    for p in RECURRENT if caps_of(p.values[0], True).attention_mask])
def test_interior_padding_step_equals_parallel(name):
    m = build(name, True).double()
    x = x_of(12, dtype=torch.float64)
    mask = torch.tensor([[1] * 8 + [0, 0] + [1, 1], [1] * 12]).bool()
    try:
        with torch.no_grad():
            y = m(x, attention_mask=mask)
    except ValueError as exc:  # refusing a mask it cannot honour is allowed, with a clear message
        assert name in str(exc) and "attention_mask" in str(exc)
        return
    with torch.no_grad():
        ys, _ = m.step_through(x, attention_mask=mask)
        prompt = torch.tensor([[1] * 6 + [0] * 3, [1] * 9]).bool()  # a right-padded prompt
        yp, state = m.prefill(x[:, :9], attention_mask=prompt)
        yr, _ = m.step_through(x[:, 9:], state)
        ys2, state2 = m.step_through(x[:, :9], attention_mask=prompt)
        yr2, _ = m.step_through(x[:, 9:], state2)
    assert (ys - y).abs().max().item() < 1e-10
    assert (torch.cat([yp, yr], 1) - torch.cat([ys2, yr2], 1)).abs().max().item() < 1e-10


@pytest.mark.parametrize("name", RECURRENT)
def test_step_checks_shapes_without_scanning_values(name):
    m = build(name, True)
    state = m.init_state(BATCH)
    with pytest.raises(ValueError, match="shape"):
        m.step(torch.randn(BATCH, 3, DIM), state)
    with pytest.raises(ValueError, match="width"):
        m.step(torch.randn(BATCH, DIM + 1), state)
    with pytest.raises(ValueError, match="attention_mask"):
        m.step(torch.randn(BATCH, DIM), state, attention_mask=torch.ones(BATCH + 1, dtype=torch.bool))
    with pytest.raises(ValueError, match="NaN"):  # the one-off scan of step_through
        m.step_through(torch.full((BATCH, 3, DIM), float("nan")))


CAPS_KNOWN_FAILING: dict[str, str] = {}


@pytest.mark.parametrize("name,causal", [
    pytest.param(*p.values, id=p.id, marks=pytest.mark.xfail(reason=CAPS_KNOWN_FAILING[p.values[0]], strict=True))
    if p.values[0] in CAPS_KNOWN_FAILING else p for p in CASES])
def test_instance_capabilities_equal_registry_answer(name, causal):
    for opts in wersa.mixer_example_options(name):  # the defaults, then the class's example option sets
        m = build(name, causal, **opts)
        assert m.capabilities == caps_of(name, causal, **opts), (name, causal, opts)


@pytest.mark.parametrize("name", [p for p in RECURRENT if caps_of(p.values[0], True).constant_state])
def test_constant_state_does_not_grow(name):
    m = build(name, True)
    with torch.no_grad():
        _, s1 = run_steps(m, x_of(3))
        _, s2 = run_steps(m, x_of(40))

    def size(s):
        if isinstance(s, torch.Tensor):
            return s.numel()
        if isinstance(s, dict):
            return sum(size(v) for v in s.values())
        if isinstance(s, (tuple, list)):
            return sum(size(v) for v in s)
        return 0

    assert size(s1) == size(s2)


@pytest.mark.parametrize("name,causal", CASES)
def test_non_recurrent_step_is_refused(name, causal):
    m = build(name, causal)
    if m.capabilities.recurrent and causal:
        return
    with pytest.raises(ValueError):
        m.init_state(1)


# ---------------------------------------------------------------- gradients
@pytest.mark.parametrize("name,causal", CASES)
def test_gradcheck_float64(name, causal):
    m = build(name, causal, dim=8, heads=2).double()
    x = x_of(6, b=1, dim=8, dtype=torch.float64).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda inp: m(inp), (x,), eps=1e-6, atol=1e-4, fast_mode=True)


@pytest.mark.parametrize("name,causal", CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gradients_finite(name, causal, dtype):
    m = build(name, causal).train().to(dtype)
    x = x_of(33, dtype=dtype).requires_grad_(True)
    m(x).float().pow(2).mean().backward()
    assert torch.isfinite(x.grad.float()).all()
    for p in m.parameters():
        if p.grad is not None:
            assert torch.isfinite(p.grad.float()).all()


# ---------------------------------------------------------------- bad input
@pytest.mark.parametrize("name,causal", CASES)
def test_bad_input_gives_clear_errors(name, causal):
    m = build(name, causal)
    with pytest.raises(ValueError, match="shape"):
        m(torch.randn(10, DIM))
    with pytest.raises(ValueError, match="width"):
        m(torch.randn(2, 10, DIM + 1))
    with pytest.raises(TypeError, match="floating"):
        m(torch.ones(2, 10, DIM, dtype=torch.long))
    with pytest.raises(TypeError):
        m("not a tensor")
    bad = x_of(10)
    bad[0, 3, 1] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        m(bad)
    bad[0, 3, 1] = float("inf")
    with pytest.raises(ValueError, match="Inf"):
        m(bad)
    bad[0, 3, 1] = float("-inf")
    with pytest.raises(ValueError, match="Inf"):
        m(bad)
    with pytest.raises(ValueError, match="attention_mask"):
        m(x_of(10), attention_mask=torch.ones(BATCH, 9))
    with pytest.raises(ValueError, match="0/1"):
        m(x_of(10), attention_mask=torch.full((BATCH, 10), 2))
    if any(True for _ in m.parameters()):
        with pytest.raises(TypeError, match="dtype"):
            m(x_of(10, dtype=torch.float64))
        with pytest.raises(ValueError, match="device"):
            m(torch.empty(2, 10, DIM, device="meta"))


def test_the_finite_check_allocates_nothing_input_sized():
    """The NaN/Inf scan reads the input once (a min and a max), no input-sized temporary."""
    from wersa.bench.memory import AllocatedBytes

    m = build("wersa", False)
    x = x_of(4096)
    with AllocatedBytes() as probe:
        m._check_x(x)
    assert probe.total < x.nbytes // 64, probe.total


@pytest.mark.parametrize("name", NAMES)
def test_bad_construction_gives_clear_errors(name):
    causal = modes(name)[0]
    with pytest.raises(ValueError, match="divide"):
        wersa.build_mixer(name, dim=30, num_heads=4, causal=causal)
    with pytest.raises(ValueError, match="dim"):
        wersa.build_mixer(name, dim=0, num_heads=1, causal=causal)
    with pytest.raises(ValueError, match="unknown option"):
        wersa.build_mixer(name, dim=DIM, num_heads=HEADS, causal=causal, not_an_option=1)
    caps = wersa.capabilities(name)
    if True not in modes(name):
        with pytest.raises(ValueError, match="causal"):
            wersa.build_mixer(name, dim=DIM, num_heads=HEADS, causal=True)
    if False not in modes(name) and not caps.bidirectional:
        with pytest.raises(ValueError, match="causal"):
            wersa.build_mixer(name, dim=DIM, num_heads=HEADS, causal=False)


def test_unknown_mixer_suggests_a_name():
    with pytest.raises(ValueError, match="did you mean 'wersa'"):
        wersa.build_mixer("wersaa", dim=DIM, num_heads=HEADS)


# ------------------------------------------------- determinism, persistence
@pytest.mark.parametrize("name,causal", CASES)
def test_deterministic_and_state_dict_round_trip(name, causal):
    x = x_of(20)
    m1, m2 = build(name, causal, seed=3), build(name, causal, seed=3)
    with torch.no_grad():
        y1 = m1(x)
        assert torch.equal(y1, m2(x))
        m3 = build(name, causal, seed=4)
        m3.load_state_dict(m1.state_dict())
        assert torch.equal(y1, m3(x))
