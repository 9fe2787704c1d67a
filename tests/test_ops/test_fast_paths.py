"""The fast paths of the group-rational op: the C++ autograd kernel, the module's direct call, and the
decomposed forward that torch.compile sees. Each is checked against the reference."""
import pytest
import torch

import mmkat.ops.rational as gr
from mmkat.models import KAT, GroupRational
from mmkat.ops import ENV_IMPL, extension_info, group_rational
from .test_group_rational import COEF_TOL, TOL, make_inputs, run

requires_ext = pytest.mark.skipif(not extension_info()['loaded'], reason='mmkat._C is not built')


def grads_of(module_or_fn, x, params, dy):
    x = x.detach().clone().requires_grad_()
    y = module_or_fn(x)
    return (y, ) + torch.autograd.grad(y, (x, ) + tuple(params), dy)


def assert_matches(out, ref, dtype):
    rtol, atol = TOL[dtype]
    for o, r in zip(out[:2], ref[:2]):
        torch.testing.assert_close(o, r, rtol=rtol, atol=atol)
    for o, r in zip(out[2:], ref[2:]):
        err = ((o.double() - r.double()).norm() / r.double().norm()).item()
        assert err < COEF_TOL[dtype], err


# ------------------------------------------------------------------------------ C++ autograd kernel
@requires_ext
@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16, torch.float64])
def test_cpp_autograd_matches_reference(dtype):
    x, wn, wd = make_inputs((3, 7, 48), 8, dtype)
    dy = torch.randn_like(x)
    ref = run('reference', x, wn, wd, 8, dy)
    out = run('compiled', x, wn, wd, 8, dy)
    assert out[0].grad_fn is not None and 'GroupRationalFunction' in out[0].grad_fn.name()
    assert_matches(out, ref, dtype)


@requires_ext
def test_cpp_autograd_records_nothing_without_grad_and_only_what_is_needed():
    x, wn, wd = make_inputs((4, 16), 8)
    y = torch.ops.mmkat.group_rational_forward(x, wn, wd, 8)
    assert y.grad_fn is None and not y.requires_grad  # nothing requires grad
    x.requires_grad_()
    with torch.no_grad():
        assert torch.ops.mmkat.group_rational_forward(x, wn, wd, 8).grad_fn is None
    with torch.inference_mode():
        torch.testing.assert_close(torch.ops.mmkat.group_rational_forward(x, wn, wd, 8), y)
    # frozen coefficients: x still gets its gradient, the coefficients none
    y = torch.ops.mmkat.group_rational_forward(x, wn, wd, 8)
    y.backward(torch.ones_like(y))
    assert x.grad is not None and wn.grad is None and wd.grad is None
    ref = run('reference', x.detach(), wn, wd, 8, torch.ones_like(y))[1]
    torch.testing.assert_close(x.grad, ref, rtol=2e-5, atol=1e-5)


@requires_ext
def test_cpp_autograd_refuses_double_backward():
    x, wn, wd = make_inputs((2, 16), 8)
    x.requires_grad_()
    y = torch.ops.mmkat.group_rational_forward(x, wn, wd, 8).sum()
    with pytest.raises(RuntimeError, match="no double backward.*impl='reference'"):
        torch.autograd.grad(y, (x, ), create_graph=True)
    x, wn, wd = (t.double().requires_grad_() for t in make_inputs((2, 16), 8))
    y = group_rational(x, wn, wd, 8, impl='reference').sum()
    (gx, ) = torch.autograd.grad(y, (x, ), create_graph=True)  # the reference's gradient is differentiable
    assert gx.requires_grad


# -------------------------------------------------------------------------------- the module's direct call
@requires_ext
def test_module_direct_call_matches_reference_and_resolves_impl_once(monkeypatch):
    monkeypatch.delenv(ENV_IMPL, raising=False)
    x, _, _ = make_inputs((2, 5, 64), 8)
    dy = torch.randn_like(x)
    fast, slow = GroupRational(8, 'swish', num_channels=64), GroupRational(8, 'swish', num_channels=64,
                                                                              impl='reference')
    with torch.no_grad():
        for m in (fast, slow):
            m.weight_denominator.add_(torch.randn(8, 4) * 0.1)
        slow.load_state_dict(fast.state_dict())
    out = grads_of(fast, x, list(fast.parameters()), dy)
    ref = grads_of(slow, x, list(slow.parameters()), dy)
    assert 'GroupRationalFunction' in out[0].grad_fn.name() and 'Reference' in ref[0].grad_fn.name()
    assert_matches(out, ref, torch.float32)
    # the environment override is read when the module is built
    monkeypatch.setenv(ENV_IMPL, 'reference')
    assert 'GroupRationalFunction' in fast(x.requires_grad_()).grad_fn.name()
    assert 'Reference' in GroupRational(8, num_channels=64)(x).grad_fn.name()


@requires_ext
def test_module_direct_call_errors_name_the_problem():
    m = GroupRational(8, num_channels=64)
    with pytest.raises(ValueError, match=r'expected an input of shape \(\.\.\., 64\), got \(2, 32\)'):
        m(torch.randn(2, 32))
    with pytest.raises(RuntimeError, match='x must be a floating-point tensor'):
        GroupRational(8)(torch.ones(2, 16, dtype=torch.int32))
    with pytest.raises(ValueError, match=r'C = 12, shape \(2, 12\)\) must be divisible by groups = 8'):
        GroupRational(8)(torch.randn(2, 12))


# ------------------------------------------------------------------------------ under torch.compile
class _Block(torch.nn.Module):
    """LayerNorm -> act1 -> fc1 -> act2: the neighbours inductor fuses the decomposed forward with."""

    def __init__(self, dim=32):
        super().__init__()
        self.norm = torch.nn.LayerNorm(dim)
        self.act1 = GroupRational(8, 'identity', num_channels=dim)
        self.fc1 = torch.nn.Linear(dim, 2 * dim)
        self.act2 = GroupRational(8, 'swish', num_channels=2 * dim)
        with torch.no_grad():
            for act in (self.act1, self.act2):
                act.weight_numerator.add_(0.05 * torch.randn(1, 6))
                act.weight_denominator.add_(0.2 * torch.randn(act.groups, 4))

    def forward(self, x):
        return self.act2(self.fc1(self.act1(self.norm(x))))


def _train_step(fn, model, x, dy):
    model.zero_grad(set_to_none=True)
    y = fn(x)
    y.backward(dy)
    return y.detach(), {k: p.grad.clone() for k, p in model.named_parameters()}


@requires_ext
@pytest.mark.parametrize('mode', ['decomposed', 'opaque'])
def test_torch_compile_modes_match_eager_and_stay_deterministic(mode, monkeypatch):
    monkeypatch.setattr(gr, 'compile_forward', mode)
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = _Block()
    x = torch.randn(4, 9, 32) * 2
    dy = torch.randn(4, 9, 64)
    ref_y, ref_g = _train_step(model, model, x, dy)
    compiled = torch.compile(model, fullgraph=True)
    y, g = _train_step(compiled, model, x, dy)
    torch.testing.assert_close(y, ref_y, rtol=1e-5, atol=1e-5)
    for k in ref_g:
        torch.testing.assert_close(g[k], ref_g[k], rtol=1e-4, atol=1e-5, msg=k)
    y2, g2 = _train_step(compiled, model, x, dy)
    assert torch.equal(y2, y) and all(torch.equal(g2[k], g[k]) for k in g), 'compiled step not deterministic'
    torch._dynamo.reset()


@requires_ext
@pytest.mark.parametrize('mode', ['decomposed', 'opaque'])
def test_inductor_graphs_hold_the_decomposed_forward_and_the_backward_kernel(mode, monkeypatch):
    """With 'decomposed', the forward graph inductor compiles holds only ATen pointwise ops (fusable) and
    the backward graph calls the group_rational_backward kernel; with 'opaque', the forward kernel stays."""
    from torch._dynamo.backends.common import aot_autograd
    from torch._inductor.decomposition import select_decomp_table
    monkeypatch.setattr(gr, 'compile_forward', mode)
    gr._register_inductor_decomposition()
    graphs = {}

    def keep(name):

        def compiler(gm, example_inputs):
            graphs[name] = str(gm.graph)
            return gm

        return compiler

    torch._dynamo.reset()
    backend = aot_autograd(fw_compiler=keep('forward'), bw_compiler=keep('backward'),
                           decompositions=select_decomp_table())
    model = _Block()
    torch.compile(model, backend=backend, fullgraph=True)(torch.randn(2, 3, 32)).sum().backward()
    assert graphs['forward'].count('mmkat.group_rational_forward') == (0 if mode == 'decomposed' else 2)
    assert graphs['backward'].count('mmkat.group_rational_backward') == 2
    torch._dynamo.reset()


@requires_ext
def test_compiled_kat_backbone_trains_like_eager():
    """A whole (tiny) KAT backbone under torch.compile(fullgraph=True): same outputs and gradients."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = KAT(dict(embed_dims=32, num_layers=2, num_heads=2), img_size=16, patch_size=8, drop_path_rate=0.)
    x = torch.randn(2, 3, 16, 16)

    def step(fn):
        model.zero_grad(set_to_none=True)
        out = fn(x)[-1]
        (out * torch.linspace(-1, 2, out.numel()).view_as(out)).sum().backward()  # well conditioned
        return out.detach(), {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}

    ref_out, ref_g = step(model)
    out, g = step(torch.compile(model, fullgraph=True))
    torch.testing.assert_close(out, ref_out, rtol=1e-4, atol=1e-5)
    assert g.keys() == ref_g.keys() and any('.act2.' in k for k in g)
    for k in ref_g:
        err = ((g[k] - ref_g[k]).norm() / ref_g[k].norm()).item()
        assert err < 1e-4, (k, err)
    torch._dynamo.reset()


def test_compile_mode_setting_is_checked(monkeypatch):
    monkeypatch.setenv(gr.ENV_COMPILE, 'fast')
    with pytest.raises(ValueError, match=f'{gr.ENV_COMPILE} must be one of'):
        gr._read_compile_mode()
    monkeypatch.setenv(gr.ENV_COMPILE, 'Opaque')
    assert gr._read_compile_mode() == 'opaque'
    monkeypatch.delenv(gr.ENV_COMPILE)
    assert gr._read_compile_mode() == 'decomposed'
