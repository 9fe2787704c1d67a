"""CUDA kernels of the group-rational op (skipped where no GPU is visible or _C has no CUDA kernels)."""
import pytest
import torch

from mmkat.ops import extension_info, get_preset, group_rational
from .test_group_rational import TOL, assert_close_to_reference, make_inputs
from .test_group_rational_bias import assert_bias_op_close, make_bias

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason='no CUDA GPU visible'),
    pytest.mark.skipif(not extension_info()['with_cuda'], reason='mmkat._C was built without CUDA kernels'),
]


@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16, torch.float16, torch.float64])
@pytest.mark.parametrize('shape,groups', [((7, 24), 8), ((3, 5, 40), 8), ((2, 3, 5, 64), 8), ((11, 9), 3),
                                          ((4, 197, 48), 8), ((8, 197, 1536), 8), ((5, 2, 8 * 13), 8),
                                          ((130, 8 * 300), 8), ((3, 12288), 8),
                                          # more than 256 coefficient gradients: reduce_kernel's passes
                                          ((300, 32 * 24), 32), ((2, 50, 48 * 16), 48)])
def test_cuda_kernel_matches_reference(dtype, shape, groups):
    x, wn, wd = make_inputs(shape, groups, dtype, device='cuda')
    assert_close_to_reference(x, wn, wd, groups)


def test_cuda_kernel_matches_cpu_reference_in_fp64():
    """The GPU result against the reference computed on the CPU in float64."""
    x, wn, wd = make_inputs((16, 197, 384), 8, torch.float32, device='cuda')
    dy = torch.randn_like(x)
    xs = [t.detach().clone().requires_grad_() for t in (x, wn, wd)]
    y = group_rational(*xs, 8, impl='compiled')
    gx, gn, gd = torch.autograd.grad(y, xs, dy)
    xc = [t.detach().cpu().double().requires_grad_() for t in (x, wn, wd)]
    yc = group_rational(*xc, 8, impl='reference')
    rx, rn, rd = torch.autograd.grad(yc, xc, dy.cpu().double())
    for a, b in ((y, yc), (gx, rx), (gn, rn), (gd, rd)):
        err = ((a.double().cpu() - b).norm() / b.norm()).item()
        assert err < 1e-5, err


@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16])
def test_cuda_non_contiguous_and_unaligned(dtype):
    base, wn, wd = make_inputs((6, 48, 5), 8, dtype, device='cuda')
    assert_close_to_reference(base.transpose(1, 2), wn, wd, 8)
    flat = make_inputs((1, 4 * 64 + 1), 8, dtype, device='cuda')[0]
    unaligned = flat[:, 1:].reshape(4, 64)  # storage offset of one element: the scalar path
    assert unaligned.data_ptr() % 16 != 0
    assert_close_to_reference(unaligned, wn, wd, 8)


@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16])
def test_cuda_backward_is_bitwise_deterministic(dtype):
    x, wn, wd = make_inputs((64, 197, 1536), 8, dtype, device='cuda')
    dy = torch.randn_like(x)
    first = torch.ops.mmkat.group_rational_backward(dy, x, wn, wd, 8)
    for _ in range(3):
        again = torch.ops.mmkat.group_rational_backward(dy, x, wn, wd, 8)
        for a, b in zip(first, again):
            assert torch.equal(a, b)


def test_cuda_half_inputs_with_large_magnitudes_stay_finite():
    # swish grows like (a5 / |b3|) x = 0.5 x: finite in fp16 up to |x| = 1e4 (random coefficients may not be)
    num, den = get_preset('swish')
    wn = torch.tensor([num], device='cuda')
    wd = torch.tensor([den] * 8, device='cuda')
    x = torch.linspace(-1e4, 1e4, 4096, device='cuda').reshape(16, 256)
    for dtype in (torch.float16, torch.bfloat16):
        y = group_rational(x.to(dtype), wn, wd, 8, impl='compiled')
        assert torch.isfinite(y).all()
        ref = group_rational(x.to(dtype).float(), wn, wd, 8, impl='reference')
        torch.testing.assert_close(y.float(), ref, rtol=TOL[dtype][0], atol=TOL[dtype][1])


def test_cuda_runs_on_the_tensors_device_and_current_stream():
    device = torch.device('cuda', torch.cuda.device_count() - 1)  # not cuda:0 where there are several
    x, wn, wd = make_inputs((32, 197, 192), 8, torch.float32, device=device)
    expected = group_rational(x, wn, wd, 8, impl='reference')
    stream = torch.cuda.Stream(device=device)
    with torch.cuda.device(0), torch.cuda.stream(stream):
        y = group_rational(x, wn, wd, 8, impl='compiled')
    stream.synchronize()
    assert y.device == device
    torch.testing.assert_close(y, expected, rtol=TOL[torch.float32][0], atol=TOL[torch.float32][1])


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason='needs two GPUs')
def test_cuda_forward_and_backward_on_the_second_gpu_while_cuda0_is_current():
    device = torch.device('cuda', 1)
    x, wn, wd = make_inputs((16, 50, 192), 8, torch.float32, device=device)
    dy = torch.randn_like(x)
    ref = [t.detach().cpu().double().requires_grad_() for t in (x, wn, wd)]
    expected = group_rational(*ref, 8, impl='reference')
    expected_grads = torch.autograd.grad(expected, ref, dy.cpu().double())
    inputs = [t.detach().clone().requires_grad_() for t in (x, wn, wd)]
    with torch.cuda.device(0):
        y = group_rational(*inputs, 8, impl='compiled')
        grads = torch.autograd.grad(y, inputs, dy)
    assert y.device == device and all(g.device == device for g in grads)
    for a, b in ((y, expected), *zip(grads, expected_grads)):
        err = ((a.double().cpu() - b).norm() / b.norm()).item()
        assert err < 1e-5, err


def test_cuda_kernels_wait_for_the_producer_on_a_side_stream():
    """The input is written by a long kernel on a side stream and read at once on that stream: a kernel
    launched on another stream (the legacy default one) would read it before it is written."""
    stream = torch.cuda.Stream()
    _, wn, wd = make_inputs((8, 8), 8, torch.float32, device='cuda')
    a = torch.randn(4096, 4096, device='cuda')
    torch.cuda.synchronize()
    with torch.cuda.stream(stream):
        x = (a @ a @ a)[:2048, :1536].contiguous() * 1e-3  # long enough to still be running at the next launch
        x.requires_grad_()
        y = group_rational(x, wn, wd, 8, impl='compiled')
        (gx, ) = torch.autograd.grad(y.sum(), (x, ))
    stream.synchronize()
    xr = x.detach().requires_grad_()
    expected = group_rational(xr, wn, wd, 8, impl='reference')
    (expected_gx, ) = torch.autograd.grad(expected.sum(), (xr, ))
    torch.testing.assert_close(y, expected, rtol=TOL[torch.float32][0], atol=TOL[torch.float32][1])
    torch.testing.assert_close(gx, expected_gx, rtol=TOL[torch.float32][0], atol=TOL[torch.float32][1])


def test_cuda_opcheck():
    for dtype in (torch.float32, torch.bfloat16):
        x, wn, wd = make_inputs((3, 5, 16), 8, dtype, device='cuda')
        for t in (x, wn, wd):
            t.requires_grad_()
        torch.library.opcheck(torch.ops.mmkat.group_rational_forward.default, (x, wn, wd, 8))


@pytest.mark.parametrize('mode', [None, 'reduce-overhead'])
@pytest.mark.parametrize('forward', ['decomposed', 'opaque'])
def test_cuda_torch_compile_trains_like_eager(mode, forward, monkeypatch):
    """torch.compile (plain and with CUDA graphs), with the forward decomposed or opaque: the outputs and
    every gradient match eager mode, and a second compiled step gives bitwise the same gradients."""
    import mmkat.ops.rational as gr
    from .test_fast_paths import _Block, _train_step
    monkeypatch.setattr(gr, 'compile_forward', forward)
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = _Block().cuda()
    x = torch.randn(4, 9, 32, device='cuda') * 2
    dy = torch.randn(4, 9, 64, device='cuda')
    ref_y, ref_g = _train_step(model, model, x, dy)
    compiled = torch.compile(model, mode=mode, fullgraph=True)
    results = []
    for _ in range(3):
        torch.compiler.cudagraph_mark_step_begin()
        results.append(_train_step(compiled, model, x, dy))
    y, g = results[-1]
    torch.testing.assert_close(y, ref_y, rtol=1e-5, atol=1e-5)
    for k in ref_g:
        err = ((g[k] - ref_g[k]).norm() / ref_g[k].norm()).item()
        assert err < 1e-4, (k, err)
    assert all(torch.equal(results[1][1][k], g[k]) for k in g)
    torch._dynamo.reset()


def test_cuda_compiled_kat_under_autocast_matches_eager():
    """A KAT with its released init under bf16 autocast: torch.compile moves the output away from eager
    mode no more than it moves the same-size GELU ViT's (bf16 rounding differs between fused and unfused
    code, so the two errors are compared, not an absolute tolerance)."""
    from mmkat.models import KAT
    x = torch.randn(4, 3, 64, 64, device='cuda')
    errors = {}
    for mlp in ('kan', 'gelu'):
        torch._dynamo.reset()
        torch.manual_seed(0)
        model = KAT('tiny', img_size=64, drop_path_rate=0., mlp=mlp)
        model.init_weights()
        model = model.cuda().eval()
        with torch.no_grad():
            truth = model(x)[-1]
            with torch.autocast('cuda', dtype=torch.bfloat16):
                eager = model(x)[-1].float()
                compiled = torch.compile(model, fullgraph=True)(x)[-1].float()
        errors[mlp] = [((out - truth).norm() / truth.norm()).item() for out in (eager, compiled)]
    (kat_eager, kat_compiled), (_, vit_compiled) = errors['kan'], errors['gelu']
    assert kat_compiled <= 1.5 * max(kat_eager, vit_compiled) + 1e-3, errors
    torch._dynamo.reset()


@pytest.mark.parametrize('dy_dtype', [torch.bfloat16, torch.float16])
def test_cuda_backward_reads_a_half_precision_gradient_of_a_float32_input(dy_dtype):
    """A bf16 / fp16 dy for an fp32 x (act1's case under autocast) is read by the kernel as it is: the result is
    bitwise that of the same dy converted to fp32 first."""
    x, wn, wd = make_inputs((4, 197, 384), 8, torch.float32, device='cuda', seed=21)
    dy = torch.randn(x.shape, device='cuda').to(dy_dtype)
    got = torch.ops.mmkat.group_rational_backward(dy, x, wn, wd, 8)
    expected = torch.ops.mmkat.group_rational_backward(dy.float(), x, wn, wd, 8)
    for g, e in zip(got, expected):
        assert g.dtype == e.dtype and torch.equal(g, e)


@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16])
def test_cuda_half_precision_far_test_from_just_above_the_threshold(dtype):
    """The vectorized kernels find elements beyond |x| = 65536 from their bits: each 8-element vector below holds
    the threshold itself, values just past it and values whose x^5 overflows fp32 (in float16: +-inf), beside
    ordinary ones. Forward and backward match the float64 reference at the finite elements; a missed far element
    would come out as inf or NaN."""
    if dtype == torch.bfloat16:  # 65536 is the threshold (direct form); 65792 is the next bfloat16 (far form)
        row = [65536.0, -65536.0, 65792.0, -65792.0, 1e8, -3e9, 0.5, -2.0]
    else:  # float16 has nothing finite beyond 65504: only +-inf take the far form
        row = [float('inf'), -float('inf'), 1000.0, -1000.0, 0.5, -2.0, 3.0, -0.25]
    gen = torch.Generator().manual_seed(22)
    x = (torch.randn(9, 5, 64, generator=gen, dtype=torch.float64) * 2).to(dtype)
    x[::2, :, 8:16] = torch.tensor(row, dtype=torch.float64).to(dtype)  # one whole vector of group 1
    x[1, 3, 40:48] = torch.tensor(row[::-1], dtype=torch.float64).to(dtype)
    x[4, 1, 60] = -65792.0 if dtype == torch.bfloat16 else -float('inf')  # one far element in an ordinary vector
    wn = torch.randn(1, 6, generator=gen, dtype=torch.float64) * 0.5
    wd = torch.randn(8, 4, generator=gen, dtype=torch.float64) * 0.5
    wd[:, 3] = wd[:, 3].abs() + 0.2  # F(x) ~ (a5 / |b3|) x stays finite for every x here
    dy = torch.randn(x.shape, generator=gen, dtype=torch.float64).to(dtype)
    leaves = [t.cuda().requires_grad_() for t in (x, wn.float(), wd.float())]
    y = group_rational(*leaves, 8, impl='compiled')
    (gx, ) = torch.autograd.grad(y, leaves[0], dy.cuda())
    xr = x.double().requires_grad_()
    yr = group_rational(xr, wn, wd, 8, impl='reference')
    (gr_, ) = torch.autograd.grad(yr, xr, dy.double())
    finite = torch.isfinite(x.double())
    assert torch.isfinite(y.double().cpu()[finite]).all() and torch.isfinite(gx.double().cpu()[finite]).all()
    rtol, atol = TOL[dtype]
    torch.testing.assert_close(y.double().cpu()[finite], yr.detach()[finite].to(dtype).double(), rtol=rtol, atol=atol)
    torch.testing.assert_close(gx.double().cpu()[finite], gr_[finite].to(dtype).double(), rtol=rtol, atol=atol)


# F(x + bias): the kBias kernels (one row segment per thread), the fallback past 256 vectors per row segment
# ([3, 8 * 2560] in bf16: 320), many groups (32), the scalar path (C = 9, 3 groups).
@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16, torch.float16, torch.float64])
@pytest.mark.parametrize('shape,groups', [((7, 24), 8), ((4, 197, 48), 8), ((8, 197, 1536), 8), ((11, 9), 3),
                                          ((3, 8 * 2560), 8), ((300, 32 * 24), 32)])
def test_cuda_bias_op_matches_reference(dtype, shape, groups):
    x, wn, wd = make_inputs(shape, groups, dtype, device='cuda', seed=4)
    assert_bias_op_close(x, make_bias(shape[-1], wn.dtype, device='cuda'), wn, wd, groups)


@pytest.mark.parametrize('dy_dtype', [torch.bfloat16, torch.float16])
def test_cuda_bias_op_half_gradient_of_float_input(dy_dtype):
    x, wn, wd = make_inputs((16, 197, 384), 8, torch.float32, device='cuda', seed=5)
    b = make_bias(384, device='cuda')
    dy = torch.randn(x.shape, device='cuda').to(dy_dtype)
    got = torch.ops.mmkat.group_rational_bias_backward(dy, x, b, wn, wd, 8)
    want = torch.ops.mmkat.group_rational_bias_backward(dy.float(), x, b, wn, wd, 8)
    for a, w in zip(got, want):
        torch.testing.assert_close(a, w, rtol=1e-6, atol=1e-6)


def test_cuda_bias_op_with_an_unaligned_bias():
    """A bias viewed at an odd offset of a larger tensor (the kernels read it in 16-byte vectors)."""
    x, wn, wd = make_inputs((5, 197, 64), 8, torch.bfloat16, device='cuda', seed=7)
    bias = make_bias(65, device='cuda')[1:]
    assert bias.data_ptr() % 16 != 0
    assert_bias_op_close(x, bias, wn, wd, 8)


def test_cuda_bias_backward_is_bitwise_deterministic():
    x, wn, wd = make_inputs((64, 197, 1536), 8, torch.bfloat16, device='cuda', seed=6)
    b = make_bias(1536, device='cuda')
    dy = torch.randn_like(x)
    first = torch.ops.mmkat.group_rational_bias_backward(dy, x, b, wn, wd, 8)
    for _ in range(3):
        again = torch.ops.mmkat.group_rational_bias_backward(dy, x, b, wn, wd, 8)
        for a, c in zip(first, again):
            assert torch.equal(a, c)
