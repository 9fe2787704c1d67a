"""The group-rational op: the reference against the scalar formula, the kernels against the reference."""
import math
import shutil
import subprocess
import sys
import warnings

import pytest
import torch

import mmkat.ops.rational as gr
from mmkat.ops import (
    ENV_IMPL,
    extension_info,
    get_preset,
    group_rational,
    group_rational_compiled,
    group_rational_reference,
    preset_names,
)

requires_ext = pytest.mark.skipif(not extension_info()['loaded'], reason='mmkat._C is not built')

# Tolerances (rtol, atol) of a kernel against the reference, per input dtype. Both compute in fp32 (fp64
# for fp64) and round the result to the input dtype, so half-precision outputs may differ by one ulp; the
# GPU contracts a*b+c into fused multiply-adds, which moves dx by a few 1e-6 where R/Q and S P/Q^2 cancel.
TOL = {
    torch.float64: (1e-10, 1e-12),
    torch.float32: (2e-5, 1e-5),
    torch.bfloat16: (1.6e-2, 1e-2),
    torch.float16: (2e-3, 1e-3),
}
# The coefficient gradients are sums over every element: compare them normwise.
COEF_TOL = {torch.float64: 1e-10, torch.float32: 1e-4, torch.bfloat16: 1e-4, torch.float16: 1e-4}


def make_inputs(shape, groups, dtype=torch.float32, device='cpu', scale=2.0, coef_dtype=None, seed=None):
    """Fresh random inputs with negative values; denominators of both signs, one of them exactly 0."""
    gen = torch.Generator().manual_seed(seed if seed is not None else torch.randint(0, 2**31, ()).item())
    x = (torch.randn(shape, generator=gen, dtype=torch.float64) * scale).to(dtype).to(device)
    coef_dtype = coef_dtype or (torch.float64 if dtype == torch.float64 else torch.float32)
    wn = (torch.randn(1, 6, generator=gen, dtype=torch.float64) * 0.5).to(coef_dtype).to(device)
    wd = (torch.randn(groups, 4, generator=gen, dtype=torch.float64) * 0.5).to(coef_dtype)
    wd[0, 1] = 0.0
    return x, wn, wd.to(device)


def scalar_rational(x, a, b):
    """The specification written for one element in plain Python floats."""
    p = sum(a[i] * x**i for i in range(6))
    q = 1.0 + sum(abs(b[j]) * abs(x)**(j + 1) for j in range(4))
    return p / q


def run(impl, x, wn, wd, groups, dy):
    x, wn, wd = (t.detach().clone().requires_grad_() for t in (x, wn, wd))
    y = group_rational(x, wn, wd, groups, impl=impl)
    gx, gn, gd = torch.autograd.grad(y, (x, wn, wd), dy)
    return y, gx, gn, gd


def assert_close_to_reference(x, wn, wd, groups, dy=None):
    dy = torch.randn_like(x) if dy is None else dy
    ref = run('reference', x, wn, wd, groups, dy)
    out = run('compiled', x, wn, wd, groups, dy)
    rtol, atol = TOL[x.dtype]
    for name, r, o in zip(('y', 'dx'), ref[:2], out[:2]):
        assert o.dtype == r.dtype == x.dtype and o.shape == x.shape, name
        torch.testing.assert_close(o, r, rtol=rtol, atol=atol, msg=lambda m: f'{name}: {m}')
    for name, r, o, w in zip(('d_numerator', 'd_denominator'), ref[2:], out[2:], (wn, wd)):
        assert o.dtype == w.dtype and o.shape == w.shape, name
        err = ((o.double() - r.double()).norm() / r.double().norm()).item()
        assert err < COEF_TOL[x.dtype], f'{name}: relative error {err:.3e}'
    return ref, out


# --------------------------------------------------------------------------------- the reference itself
def test_reference_matches_scalar_formula():
    groups, d = 4, 5
    x, wn, wd = make_inputs((3, groups * d), groups, torch.float64)
    # negative, zero and large values where the formula is most fragile
    x[0, :6] = torch.tensor([0.0, -0.0, -1e-3, 1e-3, -50.0, 80.0], dtype=torch.float64)
    x[1, -4:] = torch.tensor([-1e4, 1e4, -3.0, 3.0], dtype=torch.float64)
    y = group_rational_reference(x, wn, wd, groups)
    a = wn[0].tolist()
    for r in range(x.shape[0]):
        for c in range(x.shape[1]):
            expected = scalar_rational(x[r, c].item(), a, wd[c // d].tolist())
            assert math.isclose(y[r, c].item(), expected, rel_tol=1e-12, abs_tol=1e-12), (r, c)


def test_reference_is_not_the_signed_paper_form():
    """Q uses |b_j| |x|^(j+1); a signed-x^j denominator (the authors' fallback) is wrong for x < 0."""
    x = torch.tensor([[-2.0]], dtype=torch.float64)
    wn = torch.tensor([[0.0, 1.0, 0.0, 0.0, 0.0, 0.0]], dtype=torch.float64)
    wd = torch.tensor([[1.0, 0.0, 0.0, 0.0]], dtype=torch.float64)
    y = group_rational_reference(x, wn, wd, 1)
    assert y.item() == pytest.approx(-2.0 / 3.0)  # 1 + |1| * |-2| = 3, not 1 - 2 = -1


def test_reference_gradcheck_fp64():
    groups = 2
    x, wn, wd = make_inputs((3, 2 * groups), groups, torch.float64)
    wd = wd + torch.where(wd >= 0, 0.1, -0.1)  # away from b = 0, where |b| has a kink
    x = x + torch.where(x >= 0, 0.1, -0.1)
    for t in (x, wn, wd):
        t.requires_grad_()
    assert torch.autograd.gradcheck(lambda *a: group_rational_reference(*a, groups), (x, wn, wd))


def _analytic_identity_denominator_grad(x, dy, groups):
    """At the identity init (P = x, Q = 1): dL/db_j = sum dy * (-x) * sign(0) |x|^(j+1), sign(0) = +1."""
    xg = x.reshape(-1, groups, x.shape[-1] // groups).double()
    dyg = dy.reshape(xg.shape).double()
    return torch.stack([(-dyg * xg * xg.abs()**(j + 1)).sum(dim=(0, 2)) for j in range(4)], dim=1)


@pytest.mark.parametrize('impl', ['reference', pytest.param('compiled', marks=requires_ext)])
def test_sign_zero_convention_identity_init_gets_denominator_gradient(impl):
    groups = 4
    num, den = get_preset('identity')
    x = torch.randn(5, 16, dtype=torch.float64)
    wn = torch.tensor([num], dtype=torch.float64, requires_grad=True)
    wd = torch.tensor([den] * groups, dtype=torch.float64, requires_grad=True)
    dy = torch.randn_like(x)
    y = group_rational(x, wn, wd, groups, impl=impl)
    torch.testing.assert_close(y, x)
    (gd, ) = torch.autograd.grad(y, (wd, ), dy)
    assert (gd.abs() > 0).all(), 'b = 0 must receive a gradient (sign(0) = +1)'
    torch.testing.assert_close(gd, _analytic_identity_denominator_grad(x, dy, groups))


@pytest.mark.parametrize('impl', ['reference', pytest.param('compiled', marks=requires_ext)])
@pytest.mark.parametrize('dtype', [torch.float64, torch.float32])
def test_gradient_sign_convention_at_x_zero(impl, dtype):
    """dF/dx at x = 0 takes sign(0) = +1: (a1 - a0 |b0|) with Q(0) = 1 (and a1 + a0 |b0| for x -> 0-)."""
    wn = torch.tensor([[0.7, 1.3, 0.2, 0.0, 0.0, 0.0]], dtype=dtype)
    wd = torch.tensor([[0.5, 0.0, 0.0, 0.0]], dtype=dtype)
    x = torch.tensor([[0.0, -1e-30]], dtype=dtype, requires_grad=True)
    (gx, ) = torch.autograd.grad(group_rational(x, wn, wd, 1, impl=impl).sum(), (x, ))
    assert gx[0, 0].item() == pytest.approx(1.3 - 0.7 * 0.5)
    assert gx[0, 1].item() == pytest.approx(1.3 + 0.7 * 0.5)


# ------------------------------------------------------------------------------------ the CPU kernel
@requires_ext
@pytest.mark.parametrize('dtype', [torch.float32, torch.float64, torch.bfloat16, torch.float16])
@pytest.mark.parametrize('shape,groups', [((7, 24), 8), ((3, 5, 40), 8), ((2, 3, 5, 64), 8), ((11, 9), 3),
                                          ((1, 8), 8), ((4, 197, 48), 8), ((130, 1000), 4)])
def test_cpu_kernel_matches_reference(dtype, shape, groups):
    x, wn, wd = make_inputs(shape, groups, dtype)
    assert_close_to_reference(x, wn, wd, groups)


@requires_ext
def test_cpu_kernel_coefficients_in_another_dtype():
    """Under autocast the activation is bf16 while the coefficients stay fp32 (and vice versa)."""
    x, wn, wd = make_inputs((6, 32), 8, torch.bfloat16)
    assert_close_to_reference(x, wn, wd, 8)
    x, wn, wd = make_inputs((6, 32), 8, torch.float32, coef_dtype=torch.float64)
    assert_close_to_reference(x, wn, wd, 8)


@requires_ext
@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16])
def test_cpu_kernel_non_contiguous_inputs(dtype):
    groups = 8
    base, wn, wd = make_inputs((6, 48, 5), groups, dtype)
    x = base.transpose(1, 2)  # (6, 5, 48), non-contiguous
    assert not x.is_contiguous()
    dy = torch.randn(6, 48, 5, dtype=dtype).transpose(1, 2)
    ref, out = assert_close_to_reference(x, wn, wd, groups, dy=dy)
    sliced = make_inputs((4, 100), groups, dtype)[0][:, 2:98]  # a storage offset, rows strided
    assert_close_to_reference(sliced, wn, wd, groups)


@requires_ext
def test_cpu_kernel_gradcheck_fp64():
    groups = 2
    x, wn, wd = make_inputs((3, 4), groups, torch.float64)
    wd = wd + torch.where(wd >= 0, 0.1, -0.1)
    x = x + torch.where(x >= 0, 0.1, -0.1)
    for t in (x, wn, wd):
        t.requires_grad_()
    assert torch.autograd.gradcheck(lambda *a: group_rational_compiled(*a, groups), (x, wn, wd))


@requires_ext
def test_cpu_kernel_empty_input():
    x = torch.empty(0, 16, requires_grad=True)
    wn = torch.randn(1, 6, requires_grad=True)
    wd = torch.randn(8, 4, requires_grad=True)
    y = group_rational_compiled(x, wn, wd, 8)
    assert y.shape == (0, 16)
    y.sum().backward()
    assert torch.equal(wn.grad, torch.zeros_like(wn)) and torch.equal(wd.grad, torch.zeros_like(wd))


@requires_ext
def test_cpu_backward_is_deterministic_across_runs_and_thread_counts():
    x, wn, wd = make_inputs((64, 197, 96), 8)
    dy = torch.randn_like(x)
    threads = torch.get_num_threads()
    results = []
    try:
        for n in (threads, 1, max(threads, 2), threads):
            torch.set_num_threads(n)
            results.append(torch.ops.mmkat.group_rational_backward(dy, x, wn, wd, 8))
    finally:
        torch.set_num_threads(threads)
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert torch.equal(a, b)


@requires_ext
@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
def test_half_inputs_with_large_magnitudes_stay_finite(dtype):
    """x^5 overflows fp16 beyond |x| ~ 9: the kernels compute in fp32 whatever the input dtype."""
    groups = 8
    num, den = get_preset('swish')
    wn = torch.tensor([num])
    wd = torch.tensor([den] * groups)
    x32 = torch.linspace(-1e4, 1e4, 4096).reshape(16, 256)
    x = x32.to(dtype)
    for impl in ('compiled', 'reference'):
        y = group_rational(x, wn, wd, groups, impl=impl)
        assert torch.isfinite(y).all(), impl
        expected = group_rational_reference(x.float(), wn, wd, groups)
        torch.testing.assert_close(y.float(), expected, rtol=TOL[dtype][0], atol=TOL[dtype][1])
        dx = torch.ops.mmkat.group_rational_backward(torch.ones_like(x), x, wn, wd, groups)[0]
        assert torch.isfinite(dx).all()


# ------------------------------------------------------------------------ PyTorch custom-op machinery
@requires_ext
def test_opcheck_cpu():
    for dtype in (torch.float32, torch.bfloat16, torch.float64):
        x, wn, wd = make_inputs((3, 5, 16), 8, dtype)
        for t in (x, wn, wd):
            t.requires_grad_()
        torch.library.opcheck(torch.ops.mmkat.group_rational_forward.default, (x, wn, wd, 8))
        dy = torch.randn_like(x)
        torch.library.opcheck(torch.ops.mmkat.group_rational_backward.default,
                              (dy, x.detach(), wn.detach(), wd.detach(), 8))


class _TinyKAN(torch.nn.Module):

    def __init__(self, dim=32, groups=8):
        super().__init__()
        self.groups = groups
        self.wn1 = torch.nn.Parameter(torch.tensor([get_preset('identity')[0]]))
        self.wd1 = torch.nn.Parameter(torch.tensor([get_preset('identity')[1]] * groups))
        self.fc = torch.nn.Linear(dim, dim)
        self.wn2 = torch.nn.Parameter(torch.tensor([get_preset('swish')[0]]))
        self.wd2 = torch.nn.Parameter(torch.tensor([get_preset('swish')[1]] * groups))

    def forward(self, x):
        x = group_rational(x, self.wn1, self.wd1, self.groups)
        x = self.fc(x)
        return group_rational(x, self.wn2, self.wd2, self.groups)


@requires_ext
@pytest.mark.parametrize('backend', ['aot_eager', 'inductor'])
def test_torch_compile_without_graph_break(backend):
    torch._dynamo.reset()
    model = _TinyKAN()
    x = torch.randn(4, 7, 32)
    eager_out = model(x)
    eager_out.square().sum().backward()
    eager_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    compiled = torch.compile(model, backend=backend, fullgraph=True)  # fullgraph: a graph break raises
    out = compiled(x)
    out.square().sum().backward()
    torch.testing.assert_close(out, eager_out, rtol=1e-5, atol=1e-5)
    for g, p in zip(eager_grads, model.parameters()):
        torch.testing.assert_close(p.grad, g, rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------------------------- the presets
@pytest.mark.parametrize('name,target,tol', [
    ('identity', lambda x: x, 1e-12),
    ('swish', lambda x: x * torch.sigmoid(x), 1e-4),
    ('gelu', lambda x: 0.5 * x * (1 + torch.erf(x / math.sqrt(2))), 1e-2),
])
def test_presets_approximate_their_targets(name, target, tol):
    num, den = get_preset(name)
    x = torch.linspace(-3, 3, 2001, dtype=torch.float64).reshape(1, -1)
    y = group_rational_reference(x, torch.tensor([num], dtype=torch.float64), torch.tensor([den], dtype=torch.float64),
                                 1)
    err = (y - target(x)).abs().max().item()
    assert err < tol, f'{name}: max error {err:.3e} on [-3, 3]'


def test_preset_names_and_custom():
    assert preset_names() == ['gelu', 'identity', 'swish']
    num, den = get_preset(dict(numerator=[0, 1, 0, 0, 0, 0], denominator=[1, 0, 0, 0]))
    assert num[1] == 1.0 and den[0] == 1.0
    with pytest.raises(KeyError, match="unknown rational init preset 'relu'"):
        get_preset('relu')
    with pytest.raises(ValueError, match='6 numerator and 4 denominator'):
        get_preset(dict(numerator=[0, 1], denominator=[0, 0, 0, 0]))
    with pytest.raises(KeyError, match='numerator=\\[6 floats\\]'):
        get_preset(dict(numerator=[0] * 6))


# -------------------------------------------------------------------------------------- bad inputs
@pytest.mark.parametrize('impl', ['reference', pytest.param('compiled', marks=requires_ext)])
def test_bad_inputs_get_clear_errors(impl):
    wn, wd = torch.randn(1, 6), torch.randn(8, 4)
    with pytest.raises(ValueError, match=r'C = 30\) must be divisible by groups = 8'):
        group_rational(torch.randn(2, 30), wn, wd, 8, impl=impl)
    with pytest.raises(ValueError, match=r'weight_numerator must have shape \[1, 6\], got \[1, 5\]'):
        group_rational(torch.randn(2, 16), torch.randn(1, 5), wd, 8, impl=impl)
    with pytest.raises(ValueError, match=r'weight_denominator must have shape \[groups=8, 4\], got \[4, 4\]'):
        group_rational(torch.randn(2, 16), wn, torch.randn(4, 4), 8, impl=impl)
    with pytest.raises(TypeError, match='x must be a floating-point tensor.*torch.int64'):
        group_rational(torch.arange(16).reshape(1, 16), wn, wd, 8, impl=impl)
    with pytest.raises(TypeError, match='weight_numerator must be a floating-point tensor'):
        group_rational(torch.randn(2, 16), torch.ones(1, 6, dtype=torch.int32), wd, 8, impl=impl)
    with pytest.raises(ValueError, match='must be on one device.*meta'):
        group_rational(torch.randn(2, 16), wn, wd.to('meta'), 8, impl=impl)
    with pytest.raises(ValueError, match='groups must be a positive int'):
        group_rational(torch.randn(2, 16), wn, wd, 0, impl=impl)
    with pytest.raises(ValueError, match='at least one dimension'):
        group_rational(torch.tensor(1.0), wn, wd, 8, impl=impl)
    with pytest.raises(ValueError, match="impl must be one of .*got 'fast'"):
        group_rational(torch.randn(2, 16), wn, wd, 8, impl='fast')


@requires_ext
def test_op_level_checks_name_the_expected_shape():
    """Calling torch.ops.mmkat.* directly goes through the C++ checks."""
    with pytest.raises(RuntimeError, match=r'weight_denominator must have shape \[groups=8, 4\]'):
        torch.ops.mmkat.group_rational_forward(torch.randn(2, 16), torch.randn(1, 6), torch.randn(2, 4), 8)
    with pytest.raises(RuntimeError, match='grad_output must have the shape of x'):
        torch.ops.mmkat.group_rational_backward(torch.randn(2, 8), torch.randn(2, 16), torch.randn(1, 6),
                                                torch.randn(8, 4), 8)
    with pytest.raises(RuntimeError, match='floating-point'):
        torch.ops.mmkat.group_rational_forward(torch.ones(2, 16, dtype=torch.int32), torch.randn(1, 6),
                                               torch.randn(8, 4), 8)


@requires_ext
@pytest.mark.parametrize('call,message', [
    (lambda: torch.ops.mmkat.group_rational_forward(torch.randn(2, 12), torch.randn(1, 6), torch.randn(0, 4), 0),
     'groups must be >= 1, got 0'),
    (lambda: torch.ops.mmkat.group_rational_forward(torch.randn(2, 12), torch.randn(1, 6), torch.randn(8, 4), 8),
     r'the last dimension of x \(C = 12\) must be divisible by groups = 8'),
    (lambda: torch.ops.mmkat.group_rational_forward(torch.randn(2, 12), torch.randn(1, 5), torch.randn(4, 4), 4),
     r'weight_numerator must have shape \[1, 6\], got \[1, 5\]'),
    (lambda: torch.ops.mmkat.group_rational_backward(torch.randn(2, 12), torch.randn(2, 12), torch.randn(1, 6),
                                                     torch.randn(8, 4), 8), r'\(C = 12\)'),
], ids=['groups-0', 'channels-not-divisible', 'numerator-shape', 'backward-channels'])
def test_op_level_messages_with_numbers_raise(call, message):
    """The C++ checks format integers into their messages. An extension linked with a private, static copy of
    the C++ runtime fails exactly there: a segmentation fault (which ends this test run) or a message that stops
    where the number should be."""
    with pytest.raises(RuntimeError, match=message):
        call()


@requires_ext
@pytest.mark.skipif(not sys.platform.startswith('linux') or shutil.which('readelf') is None,
                    reason='needs Linux and binutils (readelf)')
def test_extension_uses_the_shared_cpp_runtime():
    """mmkat._C must use the libstdc++.so.6 that torch uses, not a static copy of its own (setup.py's
    _libstdcxx_link_args): the static copy breaks number formatting inside the process."""
    import mmkat._C
    dynamic = subprocess.run(['readelf', '-d', mmkat._C.__file__], capture_output=True, text=True, check=True).stdout
    needed = [line.split('[')[-1].rstrip(']') for line in dynamic.splitlines() if '(NEEDED)' in line]
    assert 'libstdc++.so.6' in needed, f'{mmkat._C.__file__} needs {needed}, not libstdc++.so.6'


# ---------------------------------------------------------------------------------------- dispatch
def test_env_variable_forces_an_implementation(monkeypatch):
    monkeypatch.setenv(ENV_IMPL, 'reference')
    x, wn, wd = make_inputs((2, 16), 8)
    x.requires_grad_()
    y = group_rational(x, wn, wd, 8)
    assert 'Reference' in type(y.grad_fn).__name__
    monkeypatch.setenv(ENV_IMPL, 'bogus')
    with pytest.raises(ValueError, match=ENV_IMPL):
        group_rational(x, wn, wd, 8)


@requires_ext
def test_auto_uses_the_compiled_op_on_cpu(monkeypatch):
    monkeypatch.delenv(ENV_IMPL, raising=False)
    x, wn, wd = make_inputs((2, 16), 8)
    x.requires_grad_()
    y = group_rational(x, wn, wd, 8)
    assert 'Reference' not in type(y.grad_fn).__name__


def test_missing_extension_auto_warns_once_and_explicit_request_explains(monkeypatch):
    monkeypatch.delenv(ENV_IMPL, raising=False)
    monkeypatch.setattr(gr, '_EXT', None)
    monkeypatch.setattr(gr, '_EXT_ERROR', 'ImportError: undefined symbol: _ZN3c10 (a made-up failure)')
    monkeypatch.setattr(gr, '_WARNED', set())
    x, wn, wd = make_inputs((2, 16), 8)
    with pytest.warns(UserWarning, match='falling back.*undefined symbol.*pip install --no-build-isolation'):
        y = group_rational(x, wn, wd, 8)
    torch.testing.assert_close(y, group_rational_reference(x, wn, wd, 8))
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        group_rational(x, wn, wd, 8)  # warned once only
    with pytest.raises(RuntimeError, match="impl='compiled'.*failed to load.*undefined symbol.*rebuild"):
        group_rational(x, wn, wd, 8, impl='compiled')
    assert extension_info()['loaded'] is False


@requires_ext
def test_cpu_baseline_isa_kernels_match_reference(tmp_path):
    """On x86-64 the CPU kernels run AVX2+FMA code when the CPU has it; MMKAT_CPU_BASELINE=1 forces the
    baseline build of the same code (the choice is made once per process, hence the subprocess)."""
    import os
    import subprocess
    import sys
    out = tmp_path / 'baseline.pt'
    code = f'''
import torch
from tests.test_ops.test_group_rational import make_inputs, run
results = []
for dtype in (torch.float32, torch.bfloat16):
    x, wn, wd = make_inputs((5, 197, 48), 8, dtype, seed=1234)
    dy = torch.randn(x.shape, generator=torch.Generator().manual_seed(5)).to(dtype)
    results.append((x, wn, wd, dy, run('compiled', x, wn, wd, 8, dy)))
torch.save(results, {str(out)!r})
'''
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    subprocess.run([sys.executable, '-c', code], check=True, cwd=root, env={**os.environ, 'MMKAT_CPU_BASELINE': '1'})
    for x, wn, wd, dy, compiled in torch.load(out):
        ref = run('reference', x, wn, wd, 8, dy)
        rtol, atol = TOL[x.dtype]
        for r, o in zip(ref[:2], compiled[:2]):
            torch.testing.assert_close(o, r, rtol=rtol, atol=atol)
        for r, o in zip(ref[2:], compiled[2:]):
            assert ((o.double() - r.double()).norm() / r.double().norm()).item() < COEF_TOL[x.dtype]
