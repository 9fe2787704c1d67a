"""group_rational_kan: a whole KAN block (act1 -> fc1 -> act2 -> fc2) as one op with one autograd node, and KAN's use
of it. It must compute what the separate calls compute, bit for bit, and keep what they keep."""
import pytest
import torch
from torch import nn

import mmkat.ops.rational as gr
from mmkat.models.layers import KAN
from mmkat.ops import extension_info
from .test_group_rational_linear import DEVICES, saved_activation_bytes

requires_ext = pytest.mark.skipif(not extension_info()['loaded'], reason='mmkat._C is not built')


def make_kan(device='cpu', dtype=torch.float32, seed=0, fc1_bias=True, fc2_bias=True, **kwargs):
    """A KAN whose rationals are far from their presets (negative coefficients included)."""
    gen = torch.Generator().manual_seed(seed)
    module = KAN(64, 256, **kwargs)
    if not fc1_bias:
        module.fc1 = nn.Linear(64, 256, bias=False)
    if not fc2_bias:
        module.fc2 = nn.Linear(256, 64, bias=False)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64) * (0.5 if p.dim() < 2 else 0.1))
    return module.to(device=device, dtype=dtype)


def run(module, x, whole, autocast=None, dy_seed=1):
    """Output, input gradient and parameter gradients, through the whole-block op or the separate calls."""
    module.zero_grad(set_to_none=True)
    xi = x.detach().clone().requires_grad_(x.requires_grad)
    original = KAN._whole
    KAN._whole = original if whole else (lambda self, x: False)
    try:
        with torch.autocast(x.device.type, dtype=autocast or torch.bfloat16, enabled=autocast is not None):
            y = module(xi)
        name = y.grad_fn.name() if y.grad_fn is not None else None
        assert ('KanOuterFunction' in str(name)) == (whole and y.grad_fn is not None), name
        dy = torch.randn(y.shape, generator=torch.Generator().manual_seed(dy_seed), dtype=torch.float64).to(y)
        if y.requires_grad:
            y.backward(dy)
    finally:
        KAN._whole = original
    return y.detach(), xi.grad, {n: p.grad for n, p in module.named_parameters()}


def assert_same(got, expected):
    (y, gx, gp), (y_ref, gx_ref, gp_ref) = got, expected
    assert y.dtype == y_ref.dtype and torch.equal(y, y_ref)
    assert (gx is None and gx_ref is None) or torch.equal(gx, gx_ref)
    assert gp.keys() == gp_ref.keys()
    for name in gp:
        a, b = gp[name], gp_ref[name]
        assert (a is None) == (b is None), name
        assert a is None or (a.dtype == b.dtype and torch.equal(a, b)), name


@requires_ext
@pytest.mark.parametrize('device', DEVICES)
@pytest.mark.parametrize('dtype,autocast', [(torch.float32, None), (torch.float64, None), (torch.float32, 'bf16'),
                                            (torch.bfloat16, None)])
@pytest.mark.parametrize('biases', [(True, True), (False, True), (True, False), (False, False)])
def test_whole_block_is_bitwise_the_separate_calls(device, dtype, autocast, biases):
    module = make_kan(device, dtype, seed=2, fc1_bias=biases[0], fc2_bias=biases[1])
    x = (torch.randn(3, 17, 64, generator=torch.Generator().manual_seed(3), dtype=torch.float64) * 2).to(device, dtype)
    x[0, 0, :2] = torch.tensor([1e6, -1e6])  # the rationals' far form too
    x.requires_grad_()
    autocast = torch.bfloat16 if autocast == 'bf16' else None
    got, expected = run(module, x, True, autocast), run(module, x, False, autocast)
    assert_same(got, expected)
    assert torch.isfinite(got[0]).all() and got[0].abs().sum() > 0


@requires_ext
def test_whole_block_partial_gradients():
    """Frozen parts get no gradient and the rest gets the separate calls' (x without grad, frozen fc1, frozen
    rationals, everything frozen but fc2's bias)."""
    x = torch.randn(2, 9, 64, generator=torch.Generator().manual_seed(4))
    for frozen in (('act1', ), ('fc1', ), ('act1', 'act2'), ('act1', 'fc1', 'act2', 'fc2.weight')):
        module = make_kan(seed=5)
        for name, p in module.named_parameters():
            p.requires_grad_(not any(name.startswith(f) for f in frozen))
        for needs_x in (True, False):
            xi = x.clone().requires_grad_(needs_x)
            assert_same(run(module, xi, True), run(module, xi, False))
    module = make_kan(seed=5).requires_grad_(False)
    y, gx, gp = run(module, x.clone().requires_grad_(False), True)
    assert all(g is None for g in gp.values())  # nothing needs a gradient: no node at all (checked in run)


@requires_ext
def test_whole_block_is_two_nodes_the_second_done_with_its_tensors_first():
    """fc2 is a node of its own, which keeps fc2's input z and its weight in the compute dtype and runs first in
    backward; the node before it keeps x and fc1's output h (act2's input), not z: z is freed before act2's
    backward makes h's gradient, as with the separate calls."""
    import weakref

    class Packed:
        def __init__(self, t):
            self.t = t

    packed = []

    def pack(t):
        p = Packed(t)
        packed.append((tuple(t.shape), t.dtype, weakref.ref(p)))
        return p

    module = make_kan(seed=6)
    x = torch.randn(4, 50, 64, generator=torch.Generator().manual_seed(7)).requires_grad_()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda p: p.t), torch.autocast('cpu', dtype=torch.bfloat16):
        y = module(x)
    outer = y.grad_fn
    inner = [f for f, _ in outer.next_functions if f is not None and 'KanInner' in f.name()]
    assert 'KanOuterFunction' in outer.name() and len(inner) == 1
    # inner keeps x, 4 coefficient tensors, fc1's weight and h; outer keeps z and fc2's bf16 weight
    kept = [(shape, dtype) for shape, dtype, _ in packed]
    assert kept[-2:] == [((4, 50, 256), torch.bfloat16), ((64, 256), torch.bfloat16)], kept
    assert ((4, 50, 256), torch.bfloat16) in kept[:-2] and ((4, 50, 64), torch.float32) in kept[:-2]
    alive_when_inner_runs = []
    inner[0].register_prehook(lambda grads: alive_when_inner_runs.extend(ref() is not None for *_, ref in packed))
    y.float().sum().backward()
    assert alive_when_inner_runs[-2:] == [False, False]  # z and fc2's weight already freed
    assert all(alive_when_inner_runs[:-2])  # h, x and the rest still held for the inner node


@requires_ext
def test_whole_block_keeps_what_the_separate_calls_keep():
    module = make_kan(seed=6)
    x = torch.randn(4, 50, 64, generator=torch.Generator().manual_seed(7)).requires_grad_()
    original = KAN._whole
    kept = saved_activation_bytes(module, x)
    try:
        KAN._whole = lambda self, x: False
        kept_separate = saved_activation_bytes(module, x)
    finally:
        KAN._whole = original
    assert kept == kept_separate, (kept, kept_separate)


@requires_ext
def test_kan_takes_the_whole_block_only_where_nothing_can_tell():
    x = torch.randn(2, 5, 64)
    module = make_kan()
    assert module._whole(x)
    for make in (lambda m: m.act2.register_forward_hook(lambda *a: None),
                 lambda m: m.fc2.register_forward_pre_hook(lambda *a: None),
                 lambda m: m.drop2.register_forward_hook(lambda *a: None)):
        hooked = make_kan()
        make(hooked)
        assert not hooked._whole(x)
    dropped = make_kan(drop=0.1)
    assert not dropped._fused(x)  # drop1 acts in training: no fused call at all
    assert dropped.eval()._whole(x)
    replaced = make_kan()
    replaced.act2 = nn.GELU()
    assert not replaced._whole(x)
    reference = make_kan()
    reference.act2.use_impl('reference')
    assert not reference._whole(x)
    folded = make_kan(fold_bias=True)
    y = folded(x.requires_grad_())
    assert 'Kan' not in y.grad_fn.name()  # fc1's bias inside act2: the folded path


@requires_ext
def test_whole_block_op_checks_and_refuses_double_backward():
    module = make_kan(seed=8, dtype=torch.float64)
    x = torch.randn(2, 3, 64, dtype=torch.float64, generator=torch.Generator().manual_seed(9))
    a1, f1, a2, f2 = module.act1, module.fc1, module.act2, module.fc2

    def args(t, dtype, bias1=True):
        return (t, a1.weight_numerator, a1.weight_denominator, 8, f1.weight, f1.bias if bias1 else None,
                a2.weight_numerator, a2.weight_denominator, 8, f2.weight, f2.bias, dtype)

    op = torch.ops.mmkat.group_rational_kan.default
    for dtype in (torch.float64, torch.bfloat16):
        for bias1 in (True, False):
            torch.library.opcheck(op, args(x.clone().requires_grad_(), dtype, bias1))
            torch.library.opcheck(op, args(x, dtype, bias1))
    xs = (x + torch.where(x >= 0, 0.1, -0.1)).requires_grad_()  # away from the kink of |x| at 0
    assert torch.autograd.gradcheck(lambda t, *w: op(t, w[0], w[1], 8, w[2], w[3], w[4], w[5], 8, w[6], w[7],
                                                      torch.float64),
                                    (xs, ) + tuple(p for p in module.parameters()))
    with pytest.raises(RuntimeError, match='group_rational_kan has no double backward'):
        y = op(*args(xs, torch.float64))
        torch.autograd.grad(y.sum(), (xs, ), create_graph=True)


def test_a_library_without_an_operator_this_code_calls_is_refused(monkeypatch):
    """An mmkat._C built from older sources (an editable install not rebuilt) is refused with a message naming the
    missing operator and how to rebuild, instead of failing later."""
    monkeypatch.setattr(gr, '_OPS', gr._OPS + ('group_rational_from_the_future', ))
    monkeypatch.setattr(gr, '_EXT', None)
    monkeypatch.setattr(gr, '_EXT_ERROR', None)
    gr._load_extension()
    if extension_info()['error'] and 'predates' not in extension_info()['error']:
        pytest.skip('mmkat._C is not built')
    assert gr._EXT is None
    assert 'predates this mmkat: it has no torch.ops.mmkat.group_rational_from_the_future' in gr._EXT_ERROR
    reason = gr._compiled_unavailable_reason(torch.device('cpu'))
    assert 'group_rational_from_the_future' in reason and 'pip install --no-build-isolation -e .' in reason
