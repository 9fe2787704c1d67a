"""Huge, infinite and NaN inputs: the op stays finite wherever F(x) is, and gives the limits at +-inf.

The direct form P(x) / Q(|x|) overflows in fp32 once a5 x^5 passes ~3.4e38 (|x| ~ 1e7.6), although
F(x) ~ (a5 / |b3|) x is far from overflowing. Above |x| = 2^16 every implementation evaluates the function
divided through by x^5 / x^4 (csrc/rational_math.h). The truth here is the direct form in float64, which
does not overflow for the fp32 inputs used.
"""
import pytest
import torch

from mmkat.ops import extension_info, group_rational

DEVICES = [
    'cpu',
    pytest.param('cuda', marks=[
        pytest.mark.cuda,
        pytest.mark.skipif(not torch.cuda.is_available(), reason='no CUDA GPU visible'),
        pytest.mark.skipif(not extension_info()['with_cuda'], reason='mmkat._C was built without CUDA kernels'),
    ]),
]
IMPLS = [
    'reference',
    pytest.param('compiled', marks=pytest.mark.skipif(not extension_info()['loaded'], reason='mmkat._C is not built')),
]
GROUPS = 4
FLT_MAX = torch.finfo(torch.float32).max


def coefficients(seed, a5_zero=False):
    """Seeded coefficients of both signs; |b3| >= 0.2 keeps F(x) ~ (a5/|b3|) x (finite for finite x)."""
    gen = torch.Generator().manual_seed(seed)
    wn = torch.randn(1, 6, generator=gen, dtype=torch.float64) * 0.5
    wd = torch.randn(GROUPS, 4, generator=gen, dtype=torch.float64) * 0.5
    wd[:, 3] = torch.where(wd[:, 3] < 0, -1.0, 1.0) * (0.2 + wd[:, 3].abs())
    if a5_zero:
        wn[0, 5] = 0.0
    return wn, wd


def huge_inputs(seed, shape, max_exp):
    """|x| = 10^U(-2, max_exp) with random signs: most elements overflow the direct form, some do not."""
    gen = torch.Generator().manual_seed(seed)
    exp = torch.rand(shape, generator=gen, dtype=torch.float64) * (max_exp + 2) - 2
    sign = torch.where(torch.rand(shape, generator=gen) < 0.5, -1.0, 1.0).double()
    return sign * 10.0**exp


def run(impl, x, wn, wd, dy=None):
    leaves = [t.detach().clone().requires_grad_(dy is not None) for t in (x, wn, wd)]
    y = group_rational(*leaves, GROUPS, impl=impl)
    if dy is None:
        return (y.detach(), )
    return (y.detach(), ) + torch.autograd.grad(y, leaves, dy)


@pytest.mark.parametrize('device', DEVICES)
@pytest.mark.parametrize('impl', IMPLS)
@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16])
def test_huge_inputs_forward_matches_float64(device, impl, dtype):
    wn, wd = coefficients(0)
    wn[0, 5] = 4.0  # > |b3|: F(x) ~ 4 x / |b3| passes the fp32 range before x does
    x = huge_inputs(1, (6, 33, 8 * GROUPS), max_exp=38).clamp(-FLT_MAX, FLT_MAX)
    x[:, :, 0], x[:, :, 1] = 1e38, -2e38
    x = x.to(dtype)
    (y, ) = run(impl, x.to(device), wn.float().to(device), wd.float().to(device))
    truth = run('reference', x.double(), wn, wd)[0]  # float64: no overflow below |x| ~ 1e61
    y = y.double().cpu()
    representable = truth.abs() < FLT_MAX * 0.99
    assert representable.float().mean() > 0.9
    assert torch.isfinite(y[representable]).all(), 'finite F(x) came out as inf or NaN'
    rtol = {torch.float32: 2e-5, torch.bfloat16: 1.6e-2}[dtype]
    torch.testing.assert_close(y[representable], truth[representable].to(dtype).double(), rtol=rtol, atol=1e-5)
    beyond = truth.abs() > FLT_MAX * 1.01  # F itself beyond the fp32 range: +-inf of the right sign
    assert beyond.any()
    assert torch.equal(y[beyond], truth[beyond].sign() * float('inf'))


@pytest.mark.parametrize('device', DEVICES)
@pytest.mark.parametrize('impl', IMPLS)
def test_huge_inputs_gradients_match_float64(device, impl):
    wn, wd = coefficients(2)
    x = huge_inputs(3, (4, 29, 8 * GROUPS), max_exp=30)  # the coefficient-gradient sums stay below 1e33
    gen = torch.Generator().manual_seed(4)
    dy = torch.randn(x.shape, generator=gen, dtype=torch.float64)
    out = run(impl, *(t.float().to(device) for t in (x, wn, wd)), dy=dy.float().to(device))
    truth = run('reference', x, wn, wd, dy=dy)
    y, gx, gn, gd = (t.double().cpu() for t in out)
    torch.testing.assert_close(y, truth[0], rtol=2e-5, atol=1e-5)
    torch.testing.assert_close(gx, truth[1], rtol=1e-4, atol=1e-5)
    for name, o, r in (('d_numerator', gn, truth[2]), ('d_denominator', gd, truth[3])):
        assert torch.isfinite(o).all(), name
        err = ((o - r).norm() / r.norm()).item()
        assert err < 1e-4, f'{name}: relative error {err:.3e}'


@pytest.mark.parametrize('device', DEVICES)
@pytest.mark.parametrize('impl', IMPLS)
@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16, torch.float16, torch.float64])
@pytest.mark.parametrize('a5_zero', [False, True])
def test_infinite_inputs_give_the_limits_and_nan_stays_nan(device, impl, dtype, a5_zero):
    wn, wd = coefficients(5, a5_zero=a5_zero)
    inf = float('inf')
    row = torch.tensor([inf, -inf, float('nan'), 0.5, -3.0, inf, 2.0, -inf], dtype=torch.float64)
    x = row.repeat(3, GROUPS)  # [3, 8 * GROUPS]: every group sees +-inf, NaN and finite values
    cdt = torch.float64 if dtype == torch.float64 else torch.float32
    dy = torch.ones(x.shape, dtype=dtype)
    y, gx, _, _ = (t.double().cpu() for t in run(impl, x.to(dtype).to(device), wn.to(cdt).to(device),
                                                  wd.to(cdt).to(device), dy=dy.to(device)))
    a5 = wn[0, 5].item()
    b3 = wd[:, 3].abs().repeat_interleave(8).repeat(3, 1)  # |b3| of each element's group
    pos, neg, nan = x == inf, x == -inf, torch.isnan(x)
    if a5_zero:  # x Pr(t) at t = 0 is inf * a5 = NaN (documented); F'(+-inf) = 0
        assert torch.isnan(y[pos | neg]).all()
        assert (gx[pos | neg] == 0).all()
    else:  # F(x) ~ (a5 / |b3|) x: +-inf with the sign of a5 x, F'(+-inf) = a5 / |b3|
        assert (y[pos] == inf * (1 if a5 > 0 else -1)).all()
        assert (y[neg] == -inf * (1 if a5 > 0 else -1)).all()
        expected = (a5 / b3).to(dtype).double()
        torch.testing.assert_close(gx[pos | neg], expected[pos | neg], rtol=1e-2, atol=1e-3)
    assert torch.isnan(y[nan]).all() and torch.isnan(gx[nan]).all()
    finite = torch.isfinite(x)  # the finite elements beside them: the direct form, in float64
    truth = run('reference', x.double(), wn, wd)[0]
    tol = {torch.float64: 1e-10, torch.float32: 2e-5, torch.bfloat16: 1.6e-2, torch.float16: 2e-3}[dtype]
    torch.testing.assert_close(y[finite], truth[finite].to(dtype).double(), rtol=tol, atol=tol)


@pytest.mark.parametrize('device', DEVICES)
@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16])
@pytest.mark.skipif(not extension_info()['loaded'], reason='mmkat._C is not built')
def test_overflow_path_leaves_the_other_elements_bit_for_bit(device, dtype):
    """A few huge elements switch only themselves to the divided-through form: every other output and
    input gradient is bitwise what the kernels give without them."""
    wn, wd = (t.float().to(device) for t in coefficients(6))
    gen = torch.Generator().manual_seed(7)
    x = (torch.randn(5, 67, 8 * GROUPS, generator=gen) * 3).to(dtype).to(device)
    dy = torch.randn(x.shape, generator=gen).to(dtype).to(device)
    x_huge = x.clone()
    x_huge[1, ::7, 3] = 1e30
    x_huge[3, 5, :] = -float('inf')
    changed = x_huge != x
    clean = torch.ops.mmkat.group_rational_forward(x, wn, wd, GROUPS)
    mixed = torch.ops.mmkat.group_rational_forward(x_huge, wn, wd, GROUPS)
    assert torch.equal(clean[~changed], mixed[~changed])
    assert torch.isfinite(mixed[x_huge == 1e30]).all()
    dx_clean = torch.ops.mmkat.group_rational_backward(dy, x, wn, wd, GROUPS)[0]
    dx_mixed = torch.ops.mmkat.group_rational_backward(dy, x_huge, wn, wd, GROUPS)[0]
    assert torch.equal(dx_clean[~changed], dx_mixed[~changed])
    assert torch.isfinite(dx_mixed).all()


@pytest.mark.parametrize('device', DEVICES)
@pytest.mark.skipif(not extension_info()['loaded'], reason='mmkat._C is not built')
def test_inductor_decomposed_forward_is_overflow_safe_too(device):
    """torch.compile's inductor evaluates the decomposed (reference) forward: the same overflow handling."""
    torch._dynamo.reset()
    wn, wd = (t.float().to(device) for t in coefficients(8))
    x = huge_inputs(9, (3, 8 * GROUPS), max_exp=30).float()
    x[0, :3] = torch.tensor([float('inf'), -float('inf'), float('nan')])
    x = x.to(device)

    def fn(v):
        return group_rational(v, wn, wd, GROUPS, impl='compiled') * 1.0

    compiled = torch.compile(fn, backend='inductor', fullgraph=True)
    out, eager = compiled(x), fn(x)
    assert torch.equal(torch.isnan(out), torch.isnan(eager)) and torch.isnan(out[0, 2])
    ok = ~torch.isnan(eager)
    torch.testing.assert_close(out[ok], eager[ok], rtol=2e-5, atol=1e-5)
    assert torch.isfinite(out[1:]).all()
