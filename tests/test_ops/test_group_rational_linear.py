"""group_rational_linear: linear(F(x)) whose backward recomputes F(x); and KAN's use of it (recompute=True)."""
import pytest
import torch
from torch import nn

from mmkat.models.layers import KAN, GroupRational
from mmkat.ops import extension_info, group_rational, group_rational_linear
from .test_group_rational import COEF_TOL, TOL, make_inputs

requires_ext = pytest.mark.skipif(not extension_info()['loaded'], reason='mmkat._C is not built')
DEVICES = ['cpu', pytest.param('cuda', marks=[pytest.mark.cuda, pytest.mark.skipif(
    not (torch.cuda.is_available() and extension_info()['with_cuda']), reason='no CUDA GPU or CUDA kernels')])]


def make_linear(in_features, out_features, dtype, device, seed):
    gen = torch.Generator().manual_seed(seed)
    w = (torch.randn(out_features, in_features, generator=gen, dtype=torch.float64) / in_features**0.5)
    b = torch.randn(out_features, generator=gen, dtype=torch.float64)
    return w.to(dtype).to(device), b.to(dtype).to(device)


def grads(fn, tensors, seed=0):
    leaves = [t.detach().clone().requires_grad_() for t in tensors]
    y = fn(*leaves)
    dy = torch.randn(y.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(y)
    return y, torch.autograd.grad(y, leaves, dy)


def unfused(impl):
    return lambda x, wn, wd, w, b: nn.functional.linear(group_rational(x, wn, wd, 8, impl=impl), w, b)


def fused(x, wn, wd, w, b):
    return group_rational_linear(x, wn, wd, 8, w, b)


def assert_grads_close(got, expected, dtype, names=('x', 'weight_numerator', 'weight_denominator', 'weight', 'bias')):
    rtol, atol = TOL[dtype]
    for name, g, e in zip(names, got, expected):
        assert g.dtype == e.dtype and g.shape == e.shape, name
        if name in ('x', ):
            torch.testing.assert_close(g, e, rtol=rtol, atol=atol, msg=lambda m: f'{name}: {m}')
        else:  # sums over every row: normwise
            err = ((g.double() - e.double()).norm() / e.double().norm()).item()
            assert err < max(COEF_TOL[dtype], 10 * rtol if dtype in (torch.bfloat16, torch.float16) else 0), \
                f'{name}: relative error {err:.3e}'


@requires_ext
@pytest.mark.parametrize('device', DEVICES)
@pytest.mark.parametrize('dtype', [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize('shape', [(3, 5, 16), (2, 197, 64), (7, 40)])
def test_fused_matches_reference(device, dtype, shape):
    x, wn, wd = make_inputs(shape, 8, dtype, device=device, seed=11)
    w, b = make_linear(shape[-1], 3 * shape[-1], dtype, device, seed=12)
    y_ref, g_ref = grads(unfused('reference'), (x, wn, wd, w, b))
    y, g = grads(fused, (x, wn, wd, w, b))
    rtol, atol = TOL[dtype]
    torch.testing.assert_close(y, y_ref, rtol=rtol, atol=atol * 4)
    assert_grads_close(g, g_ref, dtype)


@requires_ext
@pytest.mark.parametrize('device', DEVICES)
def test_fused_under_autocast_is_the_unfused_computation(device):
    """Under bf16 autocast both paths compute F(x) in fp32, round it once to bf16 and run the same bf16
    matmuls: the output is bitwise that of the separate calls, the gradients equal up to GEMM rounding."""
    x, wn, wd = make_inputs((4, 50, 64), 8, torch.float32, device=device, seed=3)
    w, b = make_linear(64, 256, torch.float32, device, seed=4)
    out = {}
    for name, fn in (('fused', fused), ('unfused', unfused('compiled'))):
        with torch.autocast(device, dtype=torch.bfloat16):
            out[name] = grads(fn, (x, wn, wd, w, b))
    (y, g), (y_ref, g_ref) = out['fused'], out['unfused']
    assert y.dtype == torch.bfloat16 and torch.equal(y, y_ref)
    assert [t.dtype for t in g] == [torch.float32] * 5
    for name, a, e in zip(('x', 'wn', 'wd', 'weight', 'bias'), g, g_ref):
        err = ((a.double() - e.double()).norm() / e.double().norm()).item()
        assert err < 1e-2, f'{name}: relative error {err:.3e}'


@requires_ext
def test_fused_without_bias_and_partial_gradients():
    x, wn, wd = make_inputs((6, 32), 8, torch.float64, seed=5)
    w, _ = make_linear(32, 16, torch.float64, 'cpu', seed=6)
    y_ref, g_ref = grads(lambda x, wn, wd, w: unfused('reference')(x, wn, wd, w, None), (x, wn, wd, w))
    y, g = grads(lambda x, wn, wd, w: group_rational_linear(x, wn, wd, 8, w), (x, wn, wd, w))
    torch.testing.assert_close(y, y_ref)
    for a, e in zip(g, g_ref):
        torch.testing.assert_close(a, e)
    # a frozen linear and an input without grad: only the coefficient gradients flow
    wn_ = wn.clone().requires_grad_()
    y = group_rational_linear(x, wn_, wd, 8, w, None)
    (gn, ) = torch.autograd.grad(y.sum(), (wn_, ))
    torch.testing.assert_close(gn, torch.autograd.grad(unfused('reference')(x, wn_, wd, w, None).sum(), (wn_, ))[0])
    # nothing needs a gradient: no graph
    assert not group_rational_linear(x, wn, wd, 8, w).requires_grad


@requires_ext
def test_fused_keeps_x_not_its_activation():
    x, wn, wd = make_inputs((4, 10, 32), 8, torch.float32, seed=7)
    w, b = make_linear(32, 64, torch.float32, 'cpu', seed=8)
    leaves = [t.clone().requires_grad_() for t in (x, wn, wd, w, b)]
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        group_rational_linear(*leaves[:3], 8, *leaves[3:])
    assert any(t is leaves[0] or torch.equal(t, leaves[0]) for t in saved)
    assert all(t.shape != x.shape or torch.equal(t, x) for t in saved), 'F(x) was kept for backward'


@requires_ext
def test_fused_refuses_double_backward_and_bad_weight():
    x, wn, wd = make_inputs((3, 16), 8, torch.float64, seed=9)
    w, b = make_linear(16, 8, torch.float64, 'cpu', seed=10)
    x.requires_grad_()
    y = group_rational_linear(x, wn, wd, 8, w, b)
    with pytest.raises(RuntimeError, match='no double backward'):
        torch.autograd.grad(y.sum(), (x, ), create_graph=True)
    (gx, ) = torch.autograd.grad(y.sum(), (x, ))  # a plain backward works
    assert torch.isfinite(gx).all()
    with pytest.raises(ValueError, match=r'weight must have shape \[out_features, 16\]'):
        group_rational_linear(x, wn, wd, 8, w.t(), b)


@requires_ext
def test_opcheck_new_ops():
    for dtype in (torch.float32, torch.float64):
        x, wn, wd = make_inputs((3, 5, 16), 8, dtype, seed=1)
        w, b = make_linear(16, 24, dtype, 'cpu', seed=2)
        leaves = [t.clone().requires_grad_() for t in (x, wn, wd)]
        for out in (torch.bfloat16, dtype):  # with and without gradients (the autograd kernel, then the backend)
            torch.library.opcheck(torch.ops.mmkat.group_rational_forward_to.default, (x, wn, wd, 8, out))
            torch.library.opcheck(torch.ops.mmkat.group_rational_forward_to.default, (*leaves, 8, out))
        args = [t.clone().requires_grad_() for t in (x, wn, wd)] + [8] + [t.clone().requires_grad_() for t in (w, b)]
        for compute in (dtype, torch.bfloat16):
            torch.library.opcheck(torch.ops.mmkat.group_rational_linear.default, tuple(args) + (compute, ))


@requires_ext
def test_forward_to_gradients():
    """forward_to's autograd kernel: gradcheck in float64, and for a bfloat16 result the gradients of the forward
    followed by the cast, bitwise (the bf16 gradient read as it is equals its float32 copy)."""
    x, wn, wd = make_inputs((2, 3, 16), 8, torch.float64, seed=9)
    x, wd = (t + torch.where(t >= 0, 0.1, -0.1) for t in (x, wd))  # away from the kinks of |x| and |b| at 0
    leaves = [t.clone().requires_grad_() for t in (x, wn, wd)]
    assert torch.autograd.gradcheck(lambda *t: torch.ops.mmkat.group_rational_forward_to(*t, 8, torch.float64), leaves)
    x, wn, wd = make_inputs((4, 9, 64), 8, torch.float32, seed=10)
    _, g = grads(lambda *t: torch.ops.mmkat.group_rational_forward_to(*t, 8, torch.bfloat16), (x, wn, wd))
    _, g_ref = grads(lambda *t: torch.ops.mmkat.group_rational_forward(*t, 8).bfloat16(), (x, wn, wd))
    assert all(torch.equal(a, b) for a, b in zip(g, g_ref))
    with pytest.raises(RuntimeError, match='group_rational_forward_to has no double backward'):
        y = torch.ops.mmkat.group_rational_forward_to(*leaves, 8, torch.float64)
        (gx, ) = torch.autograd.grad(y.sum(), leaves[:1], create_graph=True)


@requires_ext
@pytest.mark.parametrize('device', DEVICES)
@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
def test_forward_to_is_forward_then_cast(device, dtype):
    x, wn, wd = make_inputs((5, 37, 64), 8, dtype, device=device, seed=13)
    x[0, 0, :3] = torch.tensor([1e30, -1e30, float('inf')])  # the far form too
    y = torch.ops.mmkat.group_rational_forward(x, wn, wd, 8)
    for out in (torch.bfloat16, torch.float16, dtype):
        got = torch.ops.mmkat.group_rational_forward_to(x, wn, wd, 8, out)
        assert got.dtype == out
        assert torch.equal(got, y.to(out)), out


# ----------------------------------------------------------------------------------------------- KAN
def kan_pair(seed=0, **kwargs):
    torch.manual_seed(seed)
    a = KAN(64, 256, **kwargs)
    with torch.no_grad():  # a rational that is not the identity, so that recomputing act1 matters
        a.act1.weight_numerator.copy_(torch.tensor([[0.1, 0.9, 0.3, -0.2, 0.05, 0.01]]))
        a.act1.weight_denominator.normal_(0, 0.5)
    b = KAN(64, 256, **dict(kwargs, recompute=False))
    b.load_state_dict(a.state_dict())
    return a, b


def saved_activation_bytes(module, x):
    params = {p.untyped_storage().data_ptr() for p in module.parameters()}
    storages = {}

    def pack(t):
        s = t.untyped_storage()
        if s.data_ptr() not in params and s.data_ptr() != x.untyped_storage().data_ptr():
            storages[s.data_ptr()] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), torch.autocast('cpu', dtype=torch.bfloat16):
        module(x)
    return sum(storages.values())


@requires_ext
def test_kan_recompute_matches_and_saves_act1_output():
    fused_kan, plain = kan_pair()
    x = torch.randn(4, 50, 64, generator=torch.Generator().manual_seed(1))
    results = []
    for m in (fused_kan, plain):
        xi = x.clone().requires_grad_()
        with torch.autocast('cpu', dtype=torch.bfloat16):
            y = m(xi)
        y.float().square().sum().backward()
        results.append((y, xi.grad, {n: p.grad for n, p in m.named_parameters()}))
    (y, gx, gp), (y_ref, gx_ref, gp_ref) = results
    assert torch.equal(y, y_ref)
    torch.testing.assert_close(gx, gx_ref, rtol=2e-2, atol=1e-3)
    for name in gp_ref:
        err = ((gp[name].double() - gp_ref[name].double()).norm() / gp_ref[name].double().norm()).item()
        assert err < 1e-2, f'{name}: {err:.3e}'
    # act1's output (bf16 under autocast, [4, 50, 64]) and fc1's bf16 weight copy are no longer kept
    kept, kept_ref = saved_activation_bytes(fused_kan, x.requires_grad_()), saved_activation_bytes(plain, x)
    assert kept_ref - kept == 4 * 50 * 64 * 2 + 256 * 64 * 2, (kept, kept_ref)


@requires_ext
def test_kan_takes_the_separate_calls_where_they_are_observable():
    fused_kan, _ = kan_pair(drop=0.1)
    x = torch.randn(2, 5, 64)
    calls = []
    fused_kan.eval()
    fused_kan.fc1.register_forward_hook(lambda *a: calls.append('fc1'))
    fused_kan(x)
    assert calls == ['fc1']  # a hook on fc1 sees its call
    fused_kan.fc1._forward_hooks.clear()
    assert fused_kan._fused(x)  # eval: no dropout between act1 and fc1
    fused_kan.train()
    assert not fused_kan._fused(x)  # dropout between act1 and fc1 in training
    plain, _ = kan_pair()
    assert plain._fused(x)
    plain.act1.use_impl('reference')  # the ONNX export path
    assert not plain._fused(x)
    assert 'recompute=True' in repr(fused_kan)


def test_kan_runs_with_replaced_activations():
    """act1 / act2 replaced by other modules (an ablation, a wrapper): KAN computes fc2(act2(fc1(act1(x)))) with
    them, as written, on every path (this once failed in the fast-path check, which read act1's GroupRational
    attributes before its type)."""
    kan, _ = kan_pair()
    x = torch.randn(2, 5, 64, generator=torch.Generator().manual_seed(3))
    for name, replacement in (('act1', nn.Identity()), ('act2', nn.GELU())):
        module, _ = kan_pair()
        setattr(module, name, replacement)
        assert module._fused(x) == (name == 'act2')  # act1 -> fc1 as one op only with act1 a GroupRational
        with torch.no_grad():
            expected = module.fc2(module.act2(module.fc1(module.act1(x))))
            torch.testing.assert_close(module(x), expected, rtol=0, atol=0)
    assert kan._fused(x)


@pytest.mark.parametrize('p', [0., 0.5])
def test_kan_skips_only_a_dropout_that_returns_its_input(p):
    """drop2 is not called where it would return its input tensor itself (p = 0, or eval mode) and nothing hooks it;
    an active dropout, or a hooked one, is called as written."""
    module, _ = kan_pair(drop=p)
    h = torch.randn(2, 5, 256, generator=torch.Generator().manual_seed(4))
    for training in (True, False):
        module.train(training)
        torch.manual_seed(5)
        expected = module.drop2(h)
        torch.manual_seed(5)
        out = module._drop2(h)
        assert torch.equal(out, expected)
        assert (out is h) == (p == 0. or not training)
    calls = []
    module.drop2.register_forward_hook(lambda *a: calls.append('drop2'))
    module.train()
    module(torch.randn(2, 5, 64))
    assert calls == ['drop2']


def test_group_rational_reads_coefficients_of_subclasses_and_parametrizations():
    """The module's call reads its coefficients directly only when it is a plain GroupRational; a subclass or a
    parametrized coefficient (torch.nn.utils.parametrize) is read through its attribute, as written."""
    from torch.nn.utils import parametrize

    class Halved(nn.Module):
        def forward(self, w):
            return w * 0.5

    class Sub(GroupRational):
        pass

    x = torch.randn(2, 5, 64, generator=torch.Generator().manual_seed(6))
    plain = GroupRational(8, 'swish', num_channels=64)
    with torch.no_grad():
        plain.weight_denominator.normal_(0, 0.5, generator=torch.Generator().manual_seed(7))
    sub = Sub(8, 'swish', num_channels=64)
    sub.load_state_dict(plain.state_dict())
    halved = GroupRational(8, 'swish', num_channels=64)
    halved.load_state_dict(plain.state_dict())
    parametrize.register_parametrization(halved, 'weight_denominator', Halved())
    with torch.no_grad():
        assert torch.equal(sub(x), plain(x))
        expected = group_rational(x, plain.weight_numerator, plain.weight_denominator * 0.5, 8, 'reference')
        torch.testing.assert_close(halved(x), expected, rtol=1e-6, atol=1e-6)
    # a plain tensor attribute in the parameter's place (as FSDP's unsharded views and torch.func put them)
    kan, _ = kan_pair()
    xk = torch.randn(2, 5, 64, generator=torch.Generator().manual_seed(8))
    with torch.no_grad():
        expected = kan.fc2(kan.act2(kan.fc1(kan.act1(xk)) * 2) * 3)
    for module, name, scale in ((kan.act2, 'weight_numerator', 3.), (kan.fc1, 'weight', 2.), (kan.fc1, 'bias', 2.)):
        value = getattr(module, name).detach() * scale
        delattr(module, name)
        setattr(module, name, value)
    with torch.no_grad():
        torch.testing.assert_close(kan(xk), expected, rtol=1e-5, atol=1e-5)


@requires_ext
def test_kan_recompute_under_torch_compile_and_autocast():
    """Compiled (inductor, fullgraph) under bf16 autocast, KAN gives inductor the separate calls (the rational's
    forward decomposed, no opaque forward call left), and its outputs and gradients are those of eager mode,
    which runs the fused op."""
    from torch._dynamo.backends.common import aot_autograd
    from torch._inductor.decomposition import select_decomp_table

    import mmkat.ops.rational as gr
    module, _ = kan_pair()
    x = torch.randn(4, 9, 64, generator=torch.Generator().manual_seed(2))

    def step(fn):
        module.zero_grad(set_to_none=True)
        xi = x.clone().requires_grad_()
        with torch.autocast('cpu', dtype=torch.bfloat16):
            y = fn(xi)
        y.float().square().sum().backward()
        return y.detach(), [xi.grad] + [p.grad.clone() for p in module.parameters()]

    y_ref, g_ref = step(module)
    gr._register_inductor_decomposition()
    graphs = {}

    def keep(name):
        return lambda gm, example_inputs: graphs.setdefault(name, str(gm.graph)) and gm

    torch._dynamo.reset()
    backend = aot_autograd(fw_compiler=keep('forward'), bw_compiler=keep('backward'),
                           decompositions=select_decomp_table())
    step(torch.compile(module, backend=backend, fullgraph=True))
    assert 'group_rational_forward' not in graphs['forward'] and 'group_rational_linear' not in graphs['forward']
    assert graphs['backward'].count('mmkat.group_rational_backward.default') == 2
    torch._dynamo.reset()
    y, g = step(torch.compile(module, fullgraph=True))
    torch._dynamo.reset()
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), y_ref.float(), rtol=1.6e-2, atol=1e-2)
    for a, e in zip(g, g_ref):
        err = ((a.double() - e.double()).norm() / e.double().norm()).item()
        assert err < 2e-2, err


@requires_ext
def test_fused_op_computes_in_the_dtype_asked_for_and_its_fake_kernel_agrees():
    from torch._subclasses.fake_tensor import FakeTensorMode

    from mmkat.ops.rational import linear_dtype
    x, wn, wd = make_inputs((2, 5, 16), 8, torch.float32, seed=3)
    w, b = make_linear(16, 24, torch.float32, 'cpu', seed=4)
    assert linear_dtype(x) == torch.float32 and linear_dtype(x.double()) == torch.float64
    with torch.autocast('cpu', dtype=torch.bfloat16):
        assert linear_dtype(x) == torch.bfloat16 and linear_dtype(x.double()) == torch.float64
    real = torch.ops.mmkat.group_rational_linear(x, wn, wd, 8, w, b, torch.bfloat16)
    expected = nn.functional.linear(torch.ops.mmkat.group_rational_forward(x, wn, wd, 8).bfloat16(), w.bfloat16(),
                                    b.bfloat16())
    assert real.dtype == torch.bfloat16 and torch.equal(real, expected)
    with FakeTensorMode() as mode:
        args = [mode.from_tensor(t) for t in (x, wn, wd)] + [8] + [mode.from_tensor(t) for t in (w, b)]
        fake = torch.ops.mmkat.group_rational_linear(*args, torch.bfloat16)
    assert fake.shape == real.shape and fake.dtype == real.dtype


@requires_ext
def test_fused_op_compiles_under_autocast():
    """torch.ops.mmkat.group_rational_linear called directly in a compiled function (inductor, fullgraph, bf16
    autocast): its forward is decomposed, and outputs and gradients are those of eager mode."""
    import mmkat.ops.rational as gr
    x, wn, wd = make_inputs((4, 9, 32), 8, torch.float32, seed=5)
    w, b = make_linear(32, 64, torch.float32, 'cpu', seed=6)

    def fn(x, wn, wd, w, b):
        with torch.autocast('cpu', dtype=torch.bfloat16):
            gr._register_inductor_decomposition()
            return torch.ops.mmkat.group_rational_linear(x, wn, wd, 8, w, b, gr.linear_dtype(x))

    y_ref, g_ref = grads(fn, (x, wn, wd, w, b))
    torch._dynamo.reset()
    y, g = grads(torch.compile(fn, fullgraph=True), (x, wn, wd, w, b))
    torch._dynamo.reset()
    assert y.dtype == y_ref.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), y_ref.float(), rtol=1.6e-2, atol=1e-2)
    for a, e in zip(g, g_ref):
        err = ((a.double() - e.double()).norm() / e.double().norm()).item()
        assert err < 2e-2, err


# ------------------------------------------------------------------------------ KATBlock under torch.compile
def compiled_block_step(recompute, device='cpu'):
    """A KATBlock (act1 not the identity) compiled through AOTAutograd with inductor's decompositions and
    partitioner, one training step under bf16 autocast: output, gradients, and the (numel, dtype)
    of every activation-sized tensor its compiled forward keeps for backward."""
    from torch._dynamo.backends.common import aot_autograd
    from torch._functorch.partitioners import min_cut_rematerialization_partition
    from torch._inductor.decomposition import select_decomp_table

    import mmkat.ops.rational as gr
    from mmkat.models.layers.block import KATBlock
    torch.manual_seed(0)
    block = KATBlock(64, 2, rational=dict(recompute=recompute))
    with torch.no_grad():
        block.mlp.act1.weight_numerator.copy_(torch.tensor([[0.1, 0.9, 0.3, -0.2, 0.05, 0.01]]))
        block.mlp.act1.weight_denominator.normal_(0, 0.5)
    block.to(device)
    x = torch.randn(8, 50, 64, generator=torch.Generator().manual_seed(4)).to(device).requires_grad_()
    kept = []

    def forward_compiler(gm, example_inputs):
        outputs = [n for n in gm.graph.nodes if n.op == 'output'][0].args[0]
        vals = [o.meta.get('val') for o in outputs[1:]]  # outputs[0] is the block's output
        kept.extend((v.numel(), v.dtype) for v in vals if isinstance(v, torch.Tensor) and v.numel() >= 400 * 64)
        return gm

    gr._register_inductor_decomposition()
    torch._dynamo.reset()
    backend = aot_autograd(fw_compiler=forward_compiler, bw_compiler=lambda gm, example_inputs: gm,
                           decompositions=select_decomp_table(), partition_fn=min_cut_rematerialization_partition)
    with torch.autocast(device, dtype=torch.bfloat16):
        y = torch.compile(block, backend=backend, fullgraph=True)(x, (5, 10))
    y.float().square().sum().backward()
    torch._dynamo.reset()
    return y, [x.grad] + [p.grad for p in block.parameters()], sorted(kept, key=str)


@requires_ext
@pytest.mark.parametrize('device', DEVICES)
def test_compiled_block_recomputes_kan_input(device):
    """Under torch.compile, recompute=True checkpoints norm2 -> act1 -> fc1 keeping only matmul outputs: the
    compiled block computes the same values, bitwise, and no longer keeps norm2's fp32 output nor act1's bf16
    output for backward (x, kept for norm2's backward anyway, is the one fp32 activation left)."""
    y, g, kept = compiled_block_step(True, device)
    y_ref, g_ref, kept_ref = compiled_block_step(False, device)
    assert torch.equal(y, y_ref)
    assert all(torch.equal(a, b) for a, b in zip(g, g_ref))
    removed = list(kept_ref)
    for t in kept:
        removed.remove(t)  # everything kept with recompute=True is kept without it
    assert sorted(removed, key=str) == [(8 * 50 * 64, torch.bfloat16), (8 * 50 * 64, torch.float32)]


@requires_ext
def test_compiled_block_checkpoints_only_where_it_is_not_observable(monkeypatch):
    from mmkat.models.layers.block import KATBlock
    block = KATBlock(64, 2)
    assert not block._recompute_kan_input()  # eager: the fused op does it
    monkeypatch.setattr(torch.compiler, 'is_compiling', lambda: True)
    assert block._recompute_kan_input()
    with torch.no_grad():
        assert not block._recompute_kan_input()  # nothing kept for backward anyway
    assert not block.eval()._recompute_kan_input()  # not training (torch.export of an eval model, say)
    block.train()
    handle = block.norm2.register_forward_hook(lambda *a: None)
    assert not block._recompute_kan_input()  # a hook on norm2 sees its call once
    handle.remove()
    handle = block.mlp.register_forward_pre_hook(lambda *a: None)
    assert not block._recompute_kan_input()  # a hook on the KAN sees its call
    handle.remove()
    assert not KATBlock(64, 2, rational=dict(recompute=False))._recompute_kan_input()
    assert not KATBlock(64, 2, drop=0.1)._recompute_kan_input()  # dropout between act1 and fc1 in training
    assert not KATBlock(64, 2, mlp='gelu')._recompute_kan_input()


# ------------------------------------------------------------------- act1 writing fc1's dtype (forward_to)
def act1_fc1_step(module, path, x, device):
    """fc1 applied to act1's output by ``path`` ('cast': act1 -> drop1 -> fc1's autocast cast; 'to':
    KAN.act1_for_fc1) under bf16 autocast: output, act1's output dtype, gradients of x and every parameter."""
    module.zero_grad(set_to_none=True)
    xi = x.clone().requires_grad_()
    with torch.autocast(device, dtype=torch.bfloat16):
        a = module.drop1(module.act1(xi)) if path == 'cast' else module.act1_for_fc1(xi)
        y = module.fc1(a)
    dy = torch.randn(y.shape, generator=torch.Generator().manual_seed(7), dtype=torch.float64).to(y)
    y.backward(dy)
    return y.detach(), a.dtype, [xi.grad] + [p.grad for p in (module.act1.weight_numerator,
                                                             module.act1.weight_denominator, module.fc1.weight)]


@requires_ext
@pytest.mark.parametrize('device', DEVICES)
def test_act1_writes_the_dtype_fc1_computes_in_with_the_same_values(device):
    """Under autocast act1 writes bf16 itself (mmkat::group_rational_forward_to, whose backward reads the bf16
    gradient as it is): bitwise the output and the gradients of act1 -> fc1 cast by autocast."""
    module = kan_pair()[0].to(device)
    x = torch.randn(3, 7, 64, generator=torch.Generator().manual_seed(8)).to(device) * 2
    y_ref, dtype_ref, g_ref = act1_fc1_step(module, 'cast', x, device)
    y, dtype, g = act1_fc1_step(module, 'to', x, device)
    assert dtype_ref == torch.float32 and dtype == torch.bfloat16
    assert torch.equal(y, y_ref)
    assert all(torch.equal(a, b) for a, b in zip(g, g_ref))


@requires_ext
def test_act1_keeps_its_own_dtype_where_the_cast_would_show():
    module = kan_pair()[0]
    x = torch.randn(2, 5, 64)
    assert module.act1_for_fc1(x).dtype == torch.float32  # no autocast: fc1 computes in float32
    with torch.autocast('cpu', dtype=torch.bfloat16):
        assert module.act1_for_fc1(x).dtype == torch.bfloat16
        assert module.act1_for_fc1(x.double()).dtype == torch.float64  # autocast leaves float64 alone
        assert module.act1_for_fc1(x.bfloat16()).dtype == torch.bfloat16
        handle = module.fc1.register_forward_pre_hook(lambda *a: None)
        assert module.act1_for_fc1(x).dtype == torch.float32  # fc1's hook sees the input it would have seen
        handle.remove()
        dropped = KAN(64, 256, drop=0.1)
        assert dropped.act1_for_fc1(x).dtype == torch.float32  # dropout acts on act1's float32 output
        assert dropped.eval().act1_for_fc1(x).dtype == torch.bfloat16
        with pytest.raises(ValueError, match=r'expected an input of shape \(\.\.\., 64\), got \(2, 5, 32\)'):
            module.act1_for_fc1(x[..., :32])


@requires_ext
def test_compiled_block_hands_act1s_backward_the_bf16_gradient():
    """Compiled for training under bf16 autocast, both rational backward calls of a KAT block read bf16
    gradients: act1's is not first converted to float32."""
    from torch._dynamo.backends.common import aot_autograd
    from torch._functorch.partitioners import min_cut_rematerialization_partition
    from torch._inductor.decomposition import select_decomp_table

    import mmkat.ops.rational as gr
    from mmkat.models.layers.block import KATBlock
    block = KATBlock(64, 2)
    seen = []

    def backward_compiler(gm, example_inputs):
        for node in gm.graph.nodes:
            if node.target is torch.ops.mmkat.group_rational_backward.default:
                seen.append((node.args[0].meta['val'].dtype, node.args[1].meta['val'].dtype))
        return gm

    gr._register_inductor_decomposition()
    torch._dynamo.reset()
    backend = aot_autograd(fw_compiler=lambda gm, example_inputs: gm, bw_compiler=backward_compiler,
                           decompositions=select_decomp_table(), partition_fn=min_cut_rematerialization_partition)
    x = torch.randn(4, 10, 64, requires_grad=True)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        y = torch.compile(block, backend=backend, fullgraph=True)(x, (2, 5))
    y.float().sum().backward()
    torch._dynamo.reset()
    # act2: bf16 gradient of its bf16 input; act1: bf16 gradient of its float32 input (norm2's output)
    assert sorted(seen, key=str) == [(torch.bfloat16, torch.bfloat16), (torch.bfloat16, torch.float32)]
