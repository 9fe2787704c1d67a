"""F(x + bias), the op a KAN block uses with ``rational=dict(fold_bias=True)``: the compiled op against the
reference in float64, its bias gradient, input checks, and the KAN / KAT paths that use it (the CUDA kernels:
test_group_rational_cuda.py)."""
import copy

import pytest
import torch

from mmkat.ops import extension_info, group_rational_bias
from .test_group_rational import COEF_TOL, TOL, make_inputs

requires_ext = pytest.mark.skipif(not extension_info()['loaded'], reason='mmkat._C is not built')


def _grads(impl, x, bias, wn, wd, groups, dy):
    leaves = [t.detach().clone().requires_grad_() for t in (x, bias, wn, wd)]
    y = group_rational_bias(*leaves, groups, impl=impl)
    return (y, *torch.autograd.grad(y, leaves, dy))


def assert_bias_op_close(x, bias, wn, wd, groups):
    """The compiled op on x's device against the reference computed in float64 on the CPU."""
    dy = torch.randn(x.shape, dtype=torch.float64).to(x.dtype).to(x.device)
    out = _grads('compiled', x, bias, wn, wd, groups, dy)
    ref = _grads('reference', *(t.detach().cpu().double() for t in (x, bias, wn, wd)), groups, dy.cpu().double())
    rtol, atol = TOL[x.dtype]
    for name, o, r in zip(('y', 'dx'), out[:2], ref[:2]):
        assert o.dtype == x.dtype and o.shape == x.shape, name
        torch.testing.assert_close(o.cpu().double(), r.to(x.dtype).double(), rtol=rtol, atol=atol,
                                   msg=lambda m: f'{name}: {m}')
    for name, o, r, w in zip(('d_bias', 'd_numerator', 'd_denominator'), out[2:], ref[2:], (bias, wn, wd)):
        assert o.dtype == w.dtype and o.shape == w.shape, name
        err = ((o.cpu().double() - r).norm() / r.norm()).item()
        assert err < COEF_TOL[x.dtype], f'{name}: {err:.3e}'
    return out


def make_bias(channels, dtype=torch.float32, device='cpu', seed=0):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(channels, generator=gen, dtype=torch.float64) * 1.5).to(dtype).to(device)


@requires_ext
@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16, torch.float16, torch.float64])
@pytest.mark.parametrize('shape,groups', [((7, 24), 8), ((3, 5, 40), 8), ((4, 197, 48), 8), ((11, 9), 3)])
def test_cpu_bias_op_matches_reference(dtype, shape, groups):
    x, wn, wd = make_inputs(shape, groups, dtype, seed=1)
    assert_bias_op_close(x, make_bias(shape[-1], wn.dtype), wn, wd, groups)


@requires_ext
def test_bias_op_equals_the_op_at_x_plus_bias():
    """F(x + b) with the sum in fp32: the same values as the op applied to the fp32 sum, rounded once."""
    x, wn, wd = make_inputs((6, 64), 8, torch.bfloat16, seed=2)
    b = make_bias(64)
    y = group_rational_bias(x, b, wn, wd, 8, impl='compiled')
    z = x.float() + b
    assert torch.equal(y, torch.ops.mmkat.group_rational_forward(z, wn, wd, 8).bfloat16())
    dy = torch.randn(6, 64).bfloat16()
    dx, db, dn, dd = torch.ops.mmkat.group_rational_bias_backward(dy, x, b, wn, wd, 8)
    dz, dn2, dd2 = torch.ops.mmkat.group_rational_backward(dy, z, wn, wd, 8)
    assert torch.equal(dx, dz.bfloat16()) and torch.equal(dn, dn2) and torch.equal(dd, dd2)
    torch.testing.assert_close(db, dz.sum(0), rtol=1e-6, atol=1e-6)


@requires_ext
def test_bias_op_rejects_bad_bias():
    x, wn, wd = make_inputs((2, 16), 8)
    with pytest.raises(ValueError, match=r'bias must be a floating-point tensor of shape \[16\]'):
        group_rational_bias(x, torch.zeros(8), wn, wd, 8)
    with pytest.raises(ValueError, match=r'shape \[16\]'):
        group_rational_bias(x, torch.zeros(16, dtype=torch.long), wn, wd, 8)
    with pytest.raises(TypeError, match='bias must be a torch.Tensor'):
        group_rational_bias(x, [0.0] * 16, wn, wd, 8)
    with pytest.raises(RuntimeError, match=r'bias must have shape \[C=16\]'):
        torch.ops.mmkat.group_rational_bias_forward(x, torch.zeros(2, 8), wn, wd, 8)


@requires_ext
def test_bias_op_opcheck():
    x, wn, wd = make_inputs((3, 5, 16), 8, seed=3)
    b = make_bias(16).requires_grad_()
    args = [t.detach().clone().requires_grad_() for t in (x, )] + [b, wn.clone().requires_grad_(),
                                                                   wd.clone().requires_grad_()]
    torch.library.opcheck(torch.ops.mmkat.group_rational_bias_forward.default, tuple(args) + (8, ))
    dy = torch.randn(3, 5, 16)
    torch.library.opcheck(torch.ops.mmkat.group_rational_bias_backward.default,
                          (dy, x, b.detach(), wn, wd, 8), test_utils=('test_schema', 'test_faketensor'))


# ------------------------------------------------------------------------------------- KAN and KAT
def _kan_pair(seed=0):
    from mmkat.models.layers.kan import KAN
    torch.manual_seed(seed)
    plain = KAN(64, 256, fold_bias=False)
    with torch.no_grad():
        plain.fc1.bias.normal_()
        plain.act1.weight_numerator.normal_(0, 0.3)
    folded = copy.deepcopy(plain)
    folded.fold_bias = True
    return plain, folded


def _step(module, x, autocast):
    with torch.autocast('cpu', dtype=torch.bfloat16, enabled=autocast):
        y = module(x)
    y.float().square().sum().backward()
    return y.detach().float(), {n: p.grad for n, p in module.named_parameters()}


@requires_ext
@pytest.mark.parametrize('autocast', [False, True])
def test_kan_fold_bias_matches_separate_calls(autocast):
    plain, folded = _kan_pair()
    x = torch.randn(2, 7, 64)
    assert folded.folds_bias(x) and not plain.folds_bias(x)
    y0, g0 = _step(plain, x, autocast)
    y1, g1 = _step(folded, x, autocast)
    # fp32: the same sums, in another order at most; bf16 autocast: h + b is no longer rounded to bf16 first
    tol = 2e-2 if autocast else 1e-5
    torch.testing.assert_close(y1, y0, rtol=tol, atol=tol)
    for name in g0:
        err = ((g1[name] - g0[name]).norm() / g0[name].norm()).item()
        assert err < tol, f'{name}: {err:.3e}'


@requires_ext
def test_kan_fold_bias_conditions():
    _, folded = _kan_pair()
    x = torch.randn(2, 3, 64)
    assert folded.folds_bias(x)
    handle = folded.fc1.register_forward_hook(lambda *a: None)  # a hook on fc1 expects fc1's own output
    assert not folded.folds_bias(x)
    handle.remove()
    folded.act2.use_impl('reference')  # no compiled op: the separate calls
    assert not folded.folds_bias(x)
    folded.act2.use_impl('auto')
    folded.fc1.bias = None
    assert not folded.folds_bias(x)


@requires_ext
def test_kat_rejects_non_bool_fold_bias():
    from mmkat.models.backbones import KAT
    with pytest.raises(ValueError, match='rational.fold_bias must be True or False'):
        KAT(dict(embed_dims=32, num_layers=1, num_heads=2), img_size=16, patch_size=8, rational=dict(fold_bias=1))


@requires_ext
def test_compiled_kat_with_fold_bias_matches_eager():
    """torch.compile (inductor on the CPU) of a training KAT with fold_bias: the bias forward decomposed, the
    bias backward the kernel; outputs and gradients as in eager mode."""
    from mmkat.models.backbones import KAT
    torch.manual_seed(0)
    model = KAT(dict(embed_dims=32, num_layers=2, num_heads=2, mlp_ratio=4), img_size=16, patch_size=8,
                rational=dict(fold_bias=True)).train()
    with torch.no_grad():
        for module in model.modules():
            if hasattr(module, 'fold_bias'):
                module.fc1.bias.normal_()
    x = torch.randn(2, 3, 16, 16)
    weights = torch.randn_like(model(x)[-1])  # a loss with gradients of order 1 (sum(y^2) after LayerNorm ~ const)
    results = []
    for fn in (model, torch.compile(model, fullgraph=True)):
        model.zero_grad(set_to_none=True)
        y = fn(x)[-1]
        (y * weights).sum().backward()
        results.append((y.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
    (y0, g0), (y1, g1) = results
    torch.testing.assert_close(y1, y0, rtol=1e-5, atol=1e-5)
    assert g0.keys() == g1.keys() and any('fc1.bias' in n for n in g0)
    for name in g0:
        err = ((g1[name] - g0[name]).norm() / g0[name].norm().clamp_min(1e-30)).item()
        assert err < 1e-4, f'{name}: {err:.3e}'
