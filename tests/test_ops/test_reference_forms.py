"""The reference's pieces that benchmarks use through mmkat.ops' public names: the gradient formulas alone
(group_rational_reference_backward), the bare direct formula (group_rational_direct) and compile_forward =
'direct', which puts that formula into compiled models."""
import pytest
import torch

import mmkat.ops.rational as gr
from mmkat.ops import extension_info, group_rational_direct, group_rational_reference, group_rational_reference_backward
from tests.test_ops.test_group_rational import make_inputs


def test_reference_backward_is_the_gradient_of_the_reference():
    x, wn, wd = make_inputs((3, 5, 16), 4, dtype=torch.float64, seed=0)
    dy = torch.randn_like(x)
    leaves = [t.clone().requires_grad_() for t in (x, wn, wd)]
    expected = torch.autograd.grad(group_rational_reference(*leaves, 4), leaves, dy)
    got = group_rational_reference_backward(dy, x, wn, wd, 4)
    for name, e, g in zip(('dx', 'd_numerator', 'd_denominator'), expected, got):
        assert g.dtype == e.dtype and g.shape == e.shape, name
        torch.testing.assert_close(g, e, msg=lambda m: f'{name}: {m}')
    with pytest.raises(ValueError, match=r'grad_output must have the shape of x, \[3, 5, 16\], got \[3, 5, 8\]'):
        group_rational_reference_backward(dy[..., :8], x, wn, wd, 4)
    with pytest.raises(ValueError, match='divisible by groups'):
        group_rational_reference_backward(dy, x, wn, wd[:3], 3)


def test_the_direct_formula_is_the_reference_below_the_threshold_and_overflows_beyond():
    x, wn, wd = make_inputs((2, 7, 8), 2, seed=1)
    wd = wd.abs() + 0.1  # every |b| > 0: the reference stays finite for huge x
    torch.testing.assert_close(group_rational_direct(x, wn, wd, 2), group_rational_reference(x, wn, wd, 2))
    huge = torch.full((1, 8), 1e9)
    assert torch.isfinite(group_rational_reference(huge, wn, wd, 2)).all()
    assert not torch.isfinite(group_rational_direct(huge, wn, wd, 2)).all()  # a5 x^5 passes fp32's range
    with pytest.raises(ValueError, match='weight_denominator must have shape'):
        group_rational_direct(x, wn, wd, 4)


@pytest.mark.skipif(not extension_info()['loaded'], reason='mmkat._C is not built')
def test_compile_forward_picks_the_formula_inductor_decomposes_into(monkeypatch):
    from torch._inductor.decomposition import decompositions
    op = torch.ops.mmkat.group_rational_forward.default
    try:
        for mode, expected in (('direct', gr._direct_forward), ('decomposed', gr._reference_forward),
                               ('opaque', None), ('direct', gr._direct_forward)):
            monkeypatch.setattr(gr, 'compile_forward', mode)
            gr._register_inductor_decomposition()
            assert decompositions.get(op) is expected, mode
    finally:
        monkeypatch.setattr(gr, 'compile_forward', 'decomposed')
        gr._register_inductor_decomposition()
