"""The group-rational function of KAT: the reference (the specification), the compiled op, the dispatcher.

    F(x) = P(x) / Q(x),  P(x) = a0 + a1 x + ... + a5 x^5,
                         Q(x) = 1 + |b0| |x| + |b1| |x|^2 + |b2| |x|^3 + |b3| |x|^4

applied over the last dimension of x, split into ``groups`` contiguous groups of channels; the numerator
[1, 6] is shared by all groups, the denominator [groups, 4] is per group (the released KAT layout).
Gradients use sign(0) = +1 for x and for b, so coefficients that start at 0 (the identity init) still
receive a gradient.

Three implementations compute the same function:
  * ``'reference'``: pure PyTorch, explicit forward and backward formulas (works on any device; also what
    torch.compile is benchmarked on);
  * ``'compiled'``: the C++/CUDA kernels of ``mmkat._C`` exposed as ``torch.ops.mmkat.*``, with their
    autograd kernel in C++ and fake kernels for torch.compile; under torch.compile's inductor the forward
    is decomposed into the pointwise formula (so inductor fuses it with its neighbours) and the backward
    stays the kernel (see ``compile_forward``);
  * ``'auto'`` (default): ``'compiled'`` when mmkat._C has a kernel for the tensor's device, otherwise the
    reference (with a one-time warning).
The environment variable ``MMKAT_GROUP_RATIONAL_IMPL`` (auto / reference / compiled) overrides ``'auto'``.
"""
import os
import warnings
from typing import Optional

import torch

__all__ = [
    'group_rational', 'group_rational_reference', 'group_rational_reference_backward', 'group_rational_direct',
    'group_rational_linear', 'group_rational_bias',
    'extension_info', 'IMPLEMENTATIONS', 'NUM_NUMERATOR', 'NUM_DENOMINATOR', 'ENV_IMPL'
]

NUM_NUMERATOR = 6
NUM_DENOMINATOR = 4
IMPLEMENTATIONS = ('auto', 'reference', 'compiled')
ENV_IMPL = 'MMKAT_GROUP_RATIONAL_IMPL'
REBUILD_HINT = ('rebuild it against the installed torch with `pip install --no-build-isolation -e .` in the '
                'mmkat checkout (or `bash tools/setup_env.sh`)')

# --------------------------------------------------------------------------------------- the extension
_EXT = None
_EXT_ERROR: Optional[str] = None
_WARNED = set()
# The operators this Python code calls; a library without one of them is refused as a whole.
_OPS = ('group_rational_forward', 'group_rational_backward', 'group_rational_forward_to', 'group_rational_linear',
        'group_rational_kan', 'group_rational_bias_forward', 'group_rational_bias_backward')


def _load_extension():
    global _EXT, _EXT_ERROR
    try:
        from mmkat import _C  # noqa: F401  (loading the library registers torch.ops.mmkat.*)
    except Exception as e:  # ImportError, or OSError for an undefined symbol after a torch upgrade
        _EXT_ERROR = f'{type(e).__name__}: {e}'
        return
    missing = [op for op in _OPS if not hasattr(torch.ops.mmkat, op)]
    if missing:  # a library built from older sources (an editable install not rebuilt after an update)
        _EXT_ERROR = f'it predates this mmkat: it has no torch.ops.mmkat.{", ".join(missing)}'
        return
    built = getattr(_C, 'built_with_torch', 'unknown')
    running = torch.__version__.split('+')[0]
    if built not in ('unknown', running):
        # It loaded, but an ABI change between torch versions can still crash later: say so loudly.
        warnings.warn(f'mmkat._C was built with torch {built} but torch {running} is running; {REBUILD_HINT}')
    _EXT = _C


_load_extension()


def extension_info() -> dict:
    """What is known about mmkat._C: whether it loaded, why not, and what it was built with."""
    return dict(
        loaded=_EXT is not None,
        error=_EXT_ERROR,
        with_cuda=bool(getattr(_EXT, 'with_cuda', False)),
        cuda_archs=getattr(_EXT, 'cuda_archs', ''),
        cuda_build=getattr(_EXT, 'cuda_build', ''),  # build options of the CUDA kernels ('': the defaults)
        built_with_torch=getattr(_EXT, 'built_with_torch', None),
        path=getattr(_EXT, '__file__', None),
    )


def compiled_devices() -> frozenset:
    """Device types ('cpu', 'cuda') that mmkat._C has kernels for in this process."""
    if _EXT is None:
        return frozenset()
    return frozenset(('cpu', 'cuda') if _EXT.with_cuda else ('cpu', ))


def _compiled_supports(device: torch.device) -> bool:
    return device.type in compiled_devices()


def _compiled_unavailable_reason(device: torch.device) -> str:
    if _EXT is None:
        return f'mmkat._C failed to load ({_EXT_ERROR}); {REBUILD_HINT}'
    if device.type == 'cuda':
        return ('mmkat._C was built without CUDA kernels (no CUDA toolkit was found at build time); install '
                f'a toolkit, set CUDA_HOME, and {REBUILD_HINT}')
    return f'mmkat._C has kernels for cpu and cuda tensors only, got a tensor on {device}'


# ------------------------------------------------------------------------------------------- the checks
def _check_inputs(x, weight_numerator, weight_denominator, groups):
    for name, t in (('x', x), ('weight_numerator', weight_numerator), ('weight_denominator', weight_denominator)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f'group_rational: {name} must be a torch.Tensor, got {type(t).__name__}')
        if not t.is_floating_point():
            raise TypeError(f'group_rational: {name} must be a floating-point tensor (float32, float64, float16 '
                            f'or bfloat16), got {t.dtype}')
    if not isinstance(groups, int) or isinstance(groups, bool) or groups < 1:
        raise ValueError(f'group_rational: groups must be a positive int, got {groups!r}')
    if x.dim() < 1:
        raise ValueError('group_rational: x must have at least one dimension (..., C), got a 0-d tensor')
    if x.shape[-1] % groups != 0:
        raise ValueError(f'group_rational: the last dimension of x (C = {x.shape[-1]}) must be divisible by '
                         f'groups = {groups}')
    if tuple(weight_numerator.shape) != (1, NUM_NUMERATOR):
        raise ValueError(f'group_rational: weight_numerator must have shape [1, {NUM_NUMERATOR}], got '
                         f'{list(weight_numerator.shape)}')
    if tuple(weight_denominator.shape) != (groups, NUM_DENOMINATOR):
        raise ValueError(f'group_rational: weight_denominator must have shape [groups={groups}, '
                         f'{NUM_DENOMINATOR}], got {list(weight_denominator.shape)}')
    if weight_numerator.device != x.device or weight_denominator.device != x.device:
        raise ValueError(f'group_rational: x, weight_numerator and weight_denominator must be on one device, '
                         f'got {x.device}, {weight_numerator.device} and {weight_denominator.device}')


# ------------------------------------------------------------------------------ the reference (the spec)
def _math_dtype(x: torch.Tensor) -> torch.dtype:
    """fp32 math for fp32/fp16/bf16 inputs (fp16 overflows in x^5 beyond |x| ~ 9), fp64 for fp64."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _grouped(x, weight_numerator, weight_denominator, groups):
    """x as (..., G, D) in the math dtype, a as 6 scalars-tensors, |b| as 4 tensors of shape [G, 1]."""
    dt = _math_dtype(x)
    xg = x.to(dt).reshape(*x.shape[:-1], groups, x.shape[-1] // groups)
    a = weight_numerator.to(dt).reshape(NUM_NUMERATOR)
    babs = weight_denominator.to(dt).abs()
    return xg, [a[i] for i in range(NUM_NUMERATOR)], [babs[:, j:j + 1] for j in range(NUM_DENOMINATOR)]


def _horner(coeffs, t):
    """coeffs[0] + coeffs[1] t + ... evaluated with Horner's rule."""
    out = coeffs[-1] * torch.ones_like(t)
    for c in reversed(coeffs[:-1]):
        out = out * t + c
    return out


def _direct_terms(xg, a, babs, with_derivatives=False):
    """The direct form's polynomials: P(x), Q(|x|) and, for the backward, P'(x) and dQ/d|x|."""
    ax = xg.abs()
    p = _horner(a, xg)
    q = _horner([torch.ones_like(babs[0])] + babs, ax)
    if not with_derivatives:
        return p, q
    dp = _horner([i * a[i] for i in range(1, NUM_NUMERATOR)], xg)  # P'(x)
    dq = _horner([(j + 1) * babs[j] for j in range(NUM_DENOMINATOR)], ax)  # dQ/d|x|
    return p, q, dp, dq


# Above this |x| the function is evaluated divided through by x^5 / x^4 (csrc/rational_math.h, kFarThreshold):
# the direct form would overflow for |x| beyond ~1e7 in fp32 although F(x) ~ (a5 / |b3|) x does not.
FAR_THRESHOLD = 65536.0


def _far_terms(xg, a, babs, far):
    """The divided-through form's pieces at the elements where ``far`` holds (x = 1 elsewhere, so that the
    unused elements stay finite): t = 1/x, u = |t|, Pr(t) = P(x) / x^5 = a5 + a4 t + ... + a0 t^5 and
    Qr(u) = Q(|x|) / x^4 = |b3| + |b2| u + ... + u^4."""
    xf = torch.where(far, xg, torch.ones_like(xg))
    t = 1.0 / xf
    u = t.abs()
    pr = _horner([a[5 - k] for k in range(NUM_NUMERATOR)], t)
    qr = _horner([babs[3], babs[2], babs[1], babs[0], torch.ones_like(babs[0])], u)
    return xf, t, u, pr, qr


def _reference_forward(x, weight_numerator, weight_denominator, groups):
    """F(x) = P(x) / Q(|x|) for |x| <= FAR_THRESHOLD; beyond it x Pr(t) / Qr(|t|) with t = 1/x,
    Pr(t) = P(x) / x^5 = a5 + a4 t + ... + a0 t^5 and Qr = Q(|x|) / x^4 = |b3| + |b2| |t| + ... + |t|^4,
    which is finite wherever F is (while P overflows fp32 beyond |x| ~ 1e7).

    Both forms are one Horner evaluation with the coefficient order picked per element (the far form's
    coefficients are the direct form's reversed), so torch.compile's fused forward does the direct form's
    work plus one reciprocal and a few selects; the direct form's elements keep their bits."""
    xg, a, babs = _grouped(x, weight_numerator, weight_denominator, groups)
    far = xg.abs() > FAR_THRESHOLD
    z = torch.where(far, 1.0 / xg, xg)
    num = _horner([torch.where(far, a[5 - k], a[k]) for k in range(NUM_NUMERATOR)], z)
    den_coeffs = [torch.ones_like(babs[0])] + babs  # 1, |b0|, ..., |b3|: ascending powers of |x|
    den = _horner([torch.where(far, den_coeffs[4 - j], den_coeffs[j]) for j in range(5)], z.abs())
    scale = torch.where(far, xg, torch.ones_like(xg))
    return (scale * num / den).reshape(x.shape).to(x.dtype)


def _reference_backward(grad_output, x, weight_numerator, weight_denominator, groups):
    xg, a, babs = _grouped(x, weight_numerator, weight_denominator, groups)
    dy = grad_output.to(xg.dtype).reshape(xg.shape)
    far = xg.detach().abs() > FAR_THRESHOLD
    # The direct form at the elements where it holds (x = 0 elsewhere, so a double backward stays finite).
    xd = torch.where(far, torch.zeros_like(xg), xg)
    sx = torch.where(xd < 0, -1.0, 1.0).to(xg.dtype)  # sign(0) = +1
    ax = xd * sx
    p, q, dp, dq = _direct_terms(xd, a, babs, True)
    iq = 1.0 / q
    f = p * iq
    dx = dy * (dp - f * sx * dq) * iq  # P'/Q - sign(x) Q'(|x|) P/Q^2
    num_terms = [dy * iq]  # dy x^k / Q
    for _ in range(1, NUM_NUMERATOR):
        num_terms.append(num_terms[-1] * xd)
    c = -dy * f * iq
    den_terms = [c * ax]  # -dy P/Q^2 |x|^(j+1)
    for _ in range(1, NUM_DENOMINATOR):
        den_terms.append(den_terms[-1] * ax)
    # The divided-through form, computed everywhere and selected beyond the threshold (no data-dependent
    # branch: torch.compile traces the reference too). P = x^5 Pr(t), P' = x^4 P'r(t), Q = x^4 qr,
    # dQ/d|x| = |x|^3 Q'r(u), so dF/dx = (P'r - Pr Q'r / qr) / qr, dF/da_k = x^k / Q and
    # dF/d|b_j| = -F |x|^(j+1) / Q.
    xf, t, u, pr, qr = _far_terms(xg, a, babs, far)
    dpr = _horner([(5 - k) * a[5 - k] for k in range(5)], t)  # 5 a5 + 4 a4 t + ... + a1 t^4
    dqr = _horner([(4 - j) * babs[3 - j] for j in range(4)], u)  # 4|b3| + 3|b2| u + 2|b1| u^2 + |b0| u^3
    iqr = 1.0 / qr
    dx = torch.where(far, dy * (dpr - pr * iqr * dqr) * iqr, dx)
    w = dy * iqr  # dy x^4 / Q
    far_num = [w * t**4, w * t**3, w * t**2, w * t, w, w * xf]
    cf = -dy * (xf * pr * iqr) * iqr  # -dy F x^4 / Q, F = x Pr / Qr as in the forward
    far_den = [cf * u**3, cf * u**2, cf * u, cf]
    num_terms = [torch.where(far, fv, dv) for fv, dv in zip(far_num, num_terms)]
    den_terms = [torch.where(far, fv, dv) for fv, dv in zip(far_den, den_terms)]
    lead = tuple(range(xg.dim() - 2))  # all dims but (G, D)
    d_num = torch.stack([v.sum() for v in num_terms]).reshape(1, NUM_NUMERATOR)
    sign_b = torch.where(weight_denominator.to(xg.dtype) < 0, -1.0, 1.0).to(xg.dtype)  # sign(0) = +1
    d_den = torch.stack([v.sum(dim=lead + (xg.dim() - 1, )) for v in den_terms], dim=1) * sign_b
    return (dx.reshape(x.shape).to(x.dtype), d_num.to(weight_numerator.dtype), d_den.to(weight_denominator.dtype))


class _ReferenceFunction(torch.autograd.Function):

    @staticmethod
    def forward(ctx, x, weight_numerator, weight_denominator, groups):
        ctx.save_for_backward(x, weight_numerator, weight_denominator)
        ctx.groups = groups
        return _reference_forward(x, weight_numerator, weight_denominator, groups)

    @staticmethod
    def backward(ctx, grad_output):
        x, wn, wd = ctx.saved_tensors
        dx, dwn, dwd = _reference_backward(grad_output, x, wn, wd, ctx.groups)
        return dx, dwn, dwd, None


def group_rational_reference(x, weight_numerator, weight_denominator, groups):
    """The specification, in pure PyTorch (explicit gradient formulas, sign(0) = +1)."""
    _check_inputs(x, weight_numerator, weight_denominator, groups)
    return _ReferenceFunction.apply(x, weight_numerator, weight_denominator, groups)


def group_rational_reference_backward(grad_output, x, weight_numerator, weight_denominator, groups):
    """The reference's gradient formulas alone, without autograd: (dx, d weight_numerator, d weight_denominator)
    for the output gradient ``grad_output`` (the shape of ``x``), each in the dtype of its input. It is what the
    backward of :func:`group_rational_reference` computes and what the compiled backward kernel is checked
    against; benchmarks time it (eager and under torch.compile) beside that kernel."""
    _check_inputs(x, weight_numerator, weight_denominator, groups)
    if not isinstance(grad_output, torch.Tensor) or tuple(grad_output.shape) != tuple(x.shape):
        shape = list(grad_output.shape) if isinstance(grad_output, torch.Tensor) else type(grad_output).__name__
        raise ValueError(f'group_rational: grad_output must have the shape of x, {list(x.shape)}, got {shape}')
    return _reference_backward(grad_output, x, weight_numerator, weight_denominator, groups)


def _direct_forward(x, weight_numerator, weight_denominator, groups):
    xg, a, babs = _grouped(x, weight_numerator, weight_denominator, groups)
    p, q = _direct_terms(xg, a, babs)
    return (p / q).reshape(x.shape).to(x.dtype)


def group_rational_direct(x, weight_numerator, weight_denominator, groups):
    """The bare direct formula P(x) / Q(|x|) everywhere, without the divided-through form the other
    implementations switch to beyond |x| = FAR_THRESHOLD: it overflows to inf / NaN for |x| beyond ~1e7 in fp32,
    where F(x) is finite. Not for models; benchmarks compare the overflow handling's cost against it
    (``tools/benchmark_op.py --fused-forward``; ``compile_forward = 'direct'`` puts it in compiled models).
    Equal to :func:`group_rational_reference` up to rounding for |x| <= FAR_THRESHOLD; gradients by autograd."""
    _check_inputs(x, weight_numerator, weight_denominator, groups)
    return _direct_forward(x, weight_numerator, weight_denominator, groups)


# ------------------------------------------------------------------------- the compiled op: fake kernels
# The autograd kernel of group_rational_forward is registered in C++ (csrc/group_rational_autograd.cpp):
# a call costs one dispatcher trip in eager mode, forward and backward. Only the fake (meta) kernels, which
# torch.compile and opcheck use for shape propagation, are Python.
if _EXT is not None:

    @torch.library.register_fake('mmkat::group_rational_forward')
    def _forward_fake(x, weight_numerator, weight_denominator, groups):
        torch._check(x.shape[-1] % groups == 0, lambda: 'C must be divisible by groups')
        return torch.empty_like(x, memory_format=torch.contiguous_format)

    @torch.library.register_fake('mmkat::group_rational_backward')
    def _backward_fake(grad_output, x, weight_numerator, weight_denominator, groups):
        return (torch.empty_like(x, memory_format=torch.contiguous_format), torch.empty_like(weight_numerator),
                torch.empty_like(weight_denominator))

    @torch.library.register_fake('mmkat::group_rational_forward_to')
    def _forward_to_fake(x, weight_numerator, weight_denominator, groups, dtype):
        torch._check(x.shape[-1] % groups == 0, lambda: 'C must be divisible by groups')
        return torch.empty_like(x, dtype=dtype, memory_format=torch.contiguous_format)

    @torch.library.register_fake('mmkat::group_rational_linear')
    def _linear_fake(x, weight_numerator, weight_denominator, groups, weight, bias, dtype):
        torch._check(x.shape[-1] % groups == 0, lambda: 'C must be divisible by groups')
        torch._check(weight.dim() == 2 and weight.shape[1] == x.shape[-1],
                     lambda: f'weight must have shape [out_features, {x.shape[-1]}]')
        return x.new_empty((*x.shape[:-1], weight.shape[0]), dtype=dtype)

    @torch.library.register_fake('mmkat::group_rational_kan')
    def _kan_fake(x, numerator1, denominator1, groups1, weight1, bias1, numerator2, denominator2, groups2, weight2,
                  bias2, dtype):
        torch._check(x.shape[-1] % groups1 == 0, lambda: 'C must be divisible by groups1')
        torch._check(weight1.dim() == 2 and weight1.shape[1] == x.shape[-1],
                     lambda: f'weight1 must have shape [hidden, {x.shape[-1]}]')
        torch._check(weight1.shape[0] % groups2 == 0, lambda: 'hidden must be divisible by groups2')
        torch._check(weight2.dim() == 2 and weight2.shape[1] == weight1.shape[0],
                     lambda: f'weight2 must have shape [out_features, {weight1.shape[0]}]')
        return x.new_empty((*x.shape[:-1], weight2.shape[0]), dtype=dtype)

    @torch.library.register_fake('mmkat::group_rational_bias_forward')
    def _bias_forward_fake(x, bias, weight_numerator, weight_denominator, groups):
        torch._check(x.shape[-1] % groups == 0, lambda: 'C must be divisible by groups')
        torch._check(bias.dim() == 1 and bias.shape[0] == x.shape[-1], lambda: 'bias must have shape [C]')
        return torch.empty_like(x, memory_format=torch.contiguous_format)

    @torch.library.register_fake('mmkat::group_rational_bias_backward')
    def _bias_backward_fake(grad_output, x, bias, weight_numerator, weight_denominator, groups):
        return (torch.empty_like(x, memory_format=torch.contiguous_format), torch.empty_like(bias),
                torch.empty_like(weight_numerator), torch.empty_like(weight_denominator))

    _FORWARD_OP = torch.ops.mmkat.group_rational_forward.default
    _FORWARD_TO_OP = torch.ops.mmkat.group_rational_forward_to.default
    _LINEAR_OP = torch.ops.mmkat.group_rational_linear.default
    _BIAS_FORWARD_OP = torch.ops.mmkat.group_rational_bias_forward.default
    _KAN_OP = torch.ops.mmkat.group_rational_kan.default
else:
    _FORWARD_OP = _FORWARD_TO_OP = _LINEAR_OP = _BIAS_FORWARD_OP = _KAN_OP = None

# ------------------------------------------------------------------------ under torch.compile: fusable
# How torch.compile's inductor sees the compiled implementation (read when a graph is traced):
#   'decomposed' (default): the forward op is decomposed into the pointwise formula of the reference, which
#       inductor fuses with its neighbours (the LayerNorm before act1, the bias add of fc1 before act2,
#       dtype casts); the backward stays the mmkat.group_rational_backward kernel (dx and the coefficient
#       gradients in one pass, deterministic), reached through the C++ autograd kernel as in eager mode;
#   'opaque': the forward kernel stays one opaque call too;
#   'direct': decomposed like 'decomposed', into the bare direct formula (group_rational_direct) without the
#       overflow handling: wrong (inf / NaN) for |x| beyond ~1e7 in fp32; only to measure what the handling costs.
# The decomposition is added to (or, for 'opaque', removed from) inductor's decomposition table when a graph
# holding the op is traced (so that `import mmkat` does not import inductor); other backends keep the opaque
# op. Set compile_forward before torch.compile traces (or call torch._dynamo.reset() after changing it).
COMPILE_MODES = ('decomposed', 'opaque', 'direct')
ENV_COMPILE = 'MMKAT_COMPILE_FORWARD'


def _read_compile_mode() -> str:
    mode = os.environ.get(ENV_COMPILE, 'decomposed').strip().lower() or 'decomposed'
    if mode not in COMPILE_MODES:
        raise ValueError(f'{ENV_COMPILE} must be one of {COMPILE_MODES}, got {mode!r}')
    return mode


compile_forward = _read_compile_mode()  # set it (or the environment variable) before torch.compile traces


_CACHE_TAG = None  # the inductor pass that carries compile_forward into inductor's cache keys


def _cache_tag_pass():
    """A no-op inductor graph pass whose uuid names mmkat's version and compile_forward: inductor includes
    a custom pass's uuid in its cache keys, so a graph compiled in one mode is never served in the other."""
    from torch._inductor.custom_graph_pass import CustomGraphPass

    from mmkat.version import __version__

    class _MMKATCacheTag(CustomGraphPass):

        def __call__(self, graph):
            return None

        def uuid(self):
            return f'mmkat-{__version__}-group_rational-{compile_forward}'

    return _MMKATCacheTag()


def _reference_forward_to(x, weight_numerator, weight_denominator, groups, dtype):
    return _reference_forward(x, weight_numerator, weight_denominator, groups).to(dtype)


def _direct_forward_to(x, weight_numerator, weight_denominator, groups, dtype):
    return _direct_forward(x, weight_numerator, weight_denominator, groups).to(dtype)


def _biased(forward):
    """forward(x + bias, ...) with the sum in the math type and the result in x's dtype (the bias ops)."""

    def biased_forward(x, bias, weight_numerator, weight_denominator, groups):
        dt = _math_dtype(x)
        return forward(x.to(dt) + bias.to(dt), weight_numerator, weight_denominator, groups).to(x.dtype)

    biased_forward.__name__ = f'{forward.__name__}_bias'
    return biased_forward


_reference_bias_forward = _biased(_reference_forward)
_direct_bias_forward = _biased(_direct_forward)

_DECOMPOSITIONS = {  # compile_forward -> (forward, forward_to, bias_forward)
    'decomposed': (_reference_forward, _reference_forward_to, _reference_bias_forward),
    'direct': (_direct_forward, _direct_forward_to, _direct_bias_forward),
}


@torch.compiler.assume_constant_result
def _register_inductor_decomposition() -> bool:
    """Add the forward's decompositions (group_rational_forward, group_rational_forward_to, the forward of
    group_rational_linear, and group_rational_bias_forward) to inductor's table (once) and tag inductor's caches
    with compile_forward; run at trace time, not traced."""
    global _CACHE_TAG
    from torch._inductor import config as inductor_config
    from torch._inductor import decomposition as inductor_decompositions
    table = inductor_decompositions.decompositions
    ours = {fn for pair in _DECOMPOSITIONS.values() for fn in pair}
    changed = False
    for op, wanted in zip((_FORWARD_OP, _FORWARD_TO_OP, _BIAS_FORWARD_OP),
                          _DECOMPOSITIONS.get(compile_forward, (None, None, None))):
        current = table.get(op)
        if op is None or current is wanted or (wanted is None and current not in ours):
            continue
        if wanted is None:
            del table[op]  # 'opaque': inductor refuses an op that is both a fallback and decomposed
        else:
            table[op] = wanted  # the specification's pointwise formula (or the bare direct one)
        changed = True
    if changed:
        cached = getattr(inductor_decompositions, 'fast_random_decomps', None)
        if cached is not None and hasattr(cached, 'cache_clear'):
            cached.cache_clear()  # a table copied by an earlier compilation must see the change
    if _CACHE_TAG is None:
        _CACHE_TAG = _cache_tag_pass()
    if inductor_config.post_grad_custom_pre_pass is None:  # a user's own pass is left alone
        inductor_config.post_grad_custom_pre_pass = _CACHE_TAG
    return True


def _compiled_call(x, weight_numerator, weight_denominator, groups):
    """The compiled kernels, eager or traced; inputs already checked."""
    if torch.compiler.is_compiling():
        _register_inductor_decomposition()
    return _FORWARD_OP(x, weight_numerator, weight_denominator, groups)


def _compiled_call_to(x, weight_numerator, weight_denominator, groups, dtype):
    """F(x) written in ``dtype`` by the compiled op (one rounding from the math type), eager or traced; its backward
    reads the gradient in ``dtype`` as it is. Inputs already checked."""
    if torch.compiler.is_compiling():
        _register_inductor_decomposition()
    return _FORWARD_TO_OP(x, weight_numerator, weight_denominator, groups, dtype)


def group_rational_compiled(x, weight_numerator, weight_denominator, groups):
    """The C++/CUDA kernels of mmkat._C; raises RuntimeError saying why when they are unavailable."""
    _check_inputs(x, weight_numerator, weight_denominator, groups)
    if not _compiled_supports(x.device):
        raise RuntimeError(f"group_rational(impl='compiled'): {_compiled_unavailable_reason(x.device)}")
    return _compiled_call(x, weight_numerator, weight_denominator, groups)


# ---------------------------------------------------------------------------------------- the dispatcher
def _resolve_impl(impl: str) -> str:
    if impl not in IMPLEMENTATIONS:
        raise ValueError(f'group_rational: impl must be one of {IMPLEMENTATIONS}, got {impl!r}')
    if impl == 'auto':
        forced = os.environ.get(ENV_IMPL, 'auto').strip().lower() or 'auto'
        if forced not in IMPLEMENTATIONS:
            raise ValueError(f'{ENV_IMPL} must be one of {IMPLEMENTATIONS}, got {forced!r}')
        return forced
    return impl


def group_rational(x: torch.Tensor,
                   weight_numerator: torch.Tensor,
                   weight_denominator: torch.Tensor,
                   groups: int,
                   impl: str = 'auto') -> torch.Tensor:
    """Apply the group-rational function over the last dimension of ``x`` (shape (..., C)).

    Args:
        x: input of any float dtype (float32/64, float16, bfloat16); math runs in fp32 (fp64 for fp64).
        weight_numerator: [1, 6], a0..a5 in ascending powers, shared by all groups.
        weight_denominator: [groups, 4], b0..b3 per group; b0 multiplies |x|.
        groups: number of contiguous channel groups; C must be divisible by it.
        impl: 'auto', 'reference' or 'compiled' (see the module docstring).

    Returns:
        A tensor with the shape and dtype of ``x``.
    """
    impl = _resolve_impl(impl)
    if impl == 'reference':
        return group_rational_reference(x, weight_numerator, weight_denominator, groups)
    if impl == 'compiled':
        return group_rational_compiled(x, weight_numerator, weight_denominator, groups)
    if isinstance(x, torch.Tensor) and _compiled_supports(x.device):
        return group_rational_compiled(x, weight_numerator, weight_denominator, groups)
    if isinstance(x, torch.Tensor):
        key = (x.device.type, _EXT_ERROR)
        if key not in _WARNED:
            _WARNED.add(key)
            warnings.warn('group_rational: falling back to the (slower) pure-PyTorch reference: '
                          f'{_compiled_unavailable_reason(x.device)}')
    return group_rational_reference(x, weight_numerator, weight_denominator, groups)


def linear_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype an nn.Linear computes in when it is applied to ``x`` here: autocast's where autocast is on for
    x's device and casts x (floating, not float64), x's own otherwise."""
    device = x.device.type
    if x.dtype == torch.float64:
        return x.dtype
    if device == 'cpu' or device == 'cuda':  # both have autocast (the common case first: this runs on every call)
        return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else x.dtype
    # Dynamo cannot trace is_autocast_available in every torch version (2.11 breaks the graph there); a traced
    # call has an input on a device with mmkat kernels (CPU, CUDA), which both have autocast.
    if not torch.compiler.is_compiling() and not torch.amp.is_autocast_available(device):
        return x.dtype
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else x.dtype


def group_rational_linear(x: torch.Tensor,
                          weight_numerator: torch.Tensor,
                          weight_denominator: torch.Tensor,
                          groups: int,
                          weight: torch.Tensor,
                          bias: Optional[torch.Tensor] = None,
                          impl: str = 'auto') -> torch.Tensor:
    """``F.linear(group_rational(x, ...), weight, bias)``, a KAN layer, without keeping F(x) for backward.

    With the compiled op (``impl`` 'compiled', or 'auto' where mmkat._C has a kernel for x's device) it is one
    call of ``torch.ops.mmkat.group_rational_linear``: F(x) is written directly in the dtype the linear
    computes in (the autocast dtype under autocast), and backward recomputes it from x (bitwise the same
    values) for the weight gradient instead of holding it from forward to backward. Otherwise, with
    'reference', and under torch.compile (where inductor's partitioner chooses what to keep), it is the two
    calls, whose autograd keeps F(x).
    """
    _check_inputs(x, weight_numerator, weight_denominator, groups)
    for name, t in (('weight', weight), ('bias', bias)):
        if t is not None and not isinstance(t, torch.Tensor):
            raise TypeError(f'group_rational_linear: {name} must be a torch.Tensor, got {type(t).__name__}')
    if weight.dim() != 2 or weight.shape[1] != x.shape[-1]:
        raise ValueError(f'group_rational_linear: weight must have shape [out_features, {x.shape[-1]}] (the '
                         f'channels of x), got {list(weight.shape)}')
    resolved = _resolve_impl(impl)
    if resolved == 'compiled' and not _compiled_supports(x.device):
        raise RuntimeError(f"group_rational_linear(impl='compiled'): {_compiled_unavailable_reason(x.device)}")
    if resolved != 'reference' and _compiled_supports(x.device) and not torch.compiler.is_compiling():
        return _LINEAR_OP(x, weight_numerator, weight_denominator, groups, weight, bias, linear_dtype(x))
    a = group_rational(x, weight_numerator, weight_denominator, groups, resolved)
    return torch.nn.functional.linear(a, weight, bias)


def _check_bias(x, bias, what):
    if not isinstance(bias, torch.Tensor):
        raise TypeError(f'{what}: bias must be a torch.Tensor, got {type(bias).__name__}')
    if not bias.is_floating_point() or bias.dim() != 1 or bias.shape[0] != x.shape[-1]:
        raise ValueError(f'{what}: bias must be a floating-point tensor of shape [{x.shape[-1]}] (the channels of '
                         f'x), got {bias.dtype} {list(bias.shape)}')
    if bias.device != x.device:
        raise ValueError(f'{what}: bias must be on {x.device} (the device of x), got {bias.device}')


def _bias_compiled_call(x, bias, weight_numerator, weight_denominator, groups):
    """F(x + bias) by the compiled op, eager or traced; inputs already checked."""
    if torch.compiler.is_compiling():
        _register_inductor_decomposition()
    return _BIAS_FORWARD_OP(x, bias, weight_numerator, weight_denominator, groups)


def group_rational_bias(x: torch.Tensor,
                        bias: torch.Tensor,
                        weight_numerator: torch.Tensor,
                        weight_denominator: torch.Tensor,
                        groups: int,
                        impl: str = 'auto') -> torch.Tensor:
    """``group_rational(x + bias, ...)``: the bias ([C], any float dtype) added to x in the math type (fp32, fp64
    for fp64) and the result in x's dtype. A KAN block's ``act2(fc1(h))`` is ``group_rational_bias(h @ W.T,
    fc1.bias, ...)``: with the compiled op the backward returns the bias gradient (the per-channel sums of dx) from
    its one pass over x and dy, instead of a separate reduction over dx. Under torch.compile the forward is
    decomposed into the formula like :func:`group_rational`'s, and the backward stays the kernel."""
    _check_inputs(x, weight_numerator, weight_denominator, groups)
    _check_bias(x, bias, 'group_rational_bias')
    resolved = _resolve_impl(impl)
    if resolved == 'compiled' and not _compiled_supports(x.device):
        raise RuntimeError(f"group_rational_bias(impl='compiled'): {_compiled_unavailable_reason(x.device)}")
    if resolved != 'reference' and _compiled_supports(x.device):
        return _bias_compiled_call(x, bias, weight_numerator, weight_denominator, groups)
    dt = _math_dtype(x)
    y = group_rational(x.to(dt) + bias.to(dt), weight_numerator, weight_denominator, groups, resolved)
    return y.to(x.dtype)
