"""Export a KAT classifier (or its backbone) of an mmkat config to ONNX, and check the file with onnxruntime.

    python tools/export.py CONFIG CHECKPOINT --out model.onnx [--backbone] [--img-size 224] [--force]

The group-rational activations are exported through their reference formula (plain ONNX operators, no
custom op), the batch dimension is dynamic, and the written file is run with onnxruntime on a random batch
and compared with PyTorch relative to the output's scale: the file is kept when
max |onnxruntime - PyTorch| <= rtol * max(1, max |PyTorch|) + atol, with rtol / atol following the output's
dtype (float32: 1e-3 / 1e-5; --rtol, --atol change them), and the measured error is printed either way (a
deep network's float32 rounding grows with its outputs: a correct KAT-T segmentor backbone differs by 2.5e-4
on outputs up to 3.9, a wrong export by a sizeable part of the outputs). Exported:
mmpretrain classifiers (``ImageClassifier``: the logits) and, with --backbone, any config's KAT backbone (its
last output). Detectors and segmentors are not exported (their heads' post-processing is outside this tool).
Needs onnx, onnxscript and onnxruntime (tools/setup_env.sh installs them).
"""
import argparse
import os
import os.path as osp
import sys

import mmkat  # noqa: F401  (registers mmkat's modules, checkpoint allowlist and weights references)

PROG = 'tools/export.py'
# (rtol, atol) of the onnxruntime check by the output's dtype: rounding grows with the dtype's epsilon, and
# relative to the output's scale in a deep network
TOLERANCES = {'float64': (1e-7, 1e-9), 'float32': (1e-3, 1e-5), 'float16': (1e-2, 1e-3), 'bfloat16': (5e-2, 1e-2)}


def fail(message):
    sys.exit(f'{PROG}: error: {message}')


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split('\n\n')[0])
    parser.add_argument('config', help='the config the checkpoint was trained with (.py)')
    parser.add_argument('checkpoint', help='a checkpoint written by tools/train.py (or a converted one), a '
                        '.safetensors file, a URL, hf_hub:OWNER/REPO or an mmkat weights name')
    parser.add_argument('--out', required=True, help='the ONNX file to write')
    parser.add_argument('--backbone', action='store_true', help='export the KAT backbone only (its last output)')
    parser.add_argument('--img-size', type=int, default=None,
                        help="input side in pixels (default: the backbone's img_size)")
    parser.add_argument('--opset', type=int, default=18, help='ONNX opset (default 18)')
    parser.add_argument('--rtol', type=float, default=None,
                        help="accepted error relative to the output's scale max(1, max |PyTorch|) (default by the "
                        'output dtype: ' + ', '.join(f'{k} {v[0]:g}' for k, v in TOLERANCES.items()) + ')')
    parser.add_argument('--atol', type=float, default=None,
                        help='accepted error added to rtol * scale (default by the output dtype: ' +
                        ', '.join(f'{k} {v[1]:g}' for k, v in TOLERANCES.items()) + ')')
    parser.add_argument('--force', action='store_true', help='replace an existing --out file')
    return parser.parse_args(argv)


def build(cfg, checkpoint, backbone_only):
    import torch
    from mmengine.registry import MODELS, init_default_scope

    from mmkat.engine.checkpoint_fit import checkpoint_fit, read_as_mmengine
    from mmkat.models import KAT, GroupRational

    if cfg.get('default_scope'):
        init_default_scope(cfg.default_scope)
    model = MODELS.build(cfg.model)
    from mmkat.hub import WeightsError
    try:
        state = read_as_mmengine(checkpoint)  # as mmengine's loader sees the file, read once
    except (ValueError, WeightsError) as e:
        fail(str(e))
    problems = checkpoint_fit(model, state).problems()
    if problems:  # an export of a half-loaded model would not be the checkpoint's
        fail(f'{checkpoint} does not fit the model of the config:\n  ' + '\n  '.join(problems))
    model.load_state_dict(state, strict=False)  # every parameter is in it (checked above)
    backbone = getattr(model, 'backbone', model)
    if not isinstance(backbone, KAT):
        fail(f'the config builds a {type(backbone).__name__} backbone, not a KAT')
    if not backbone_only and not hasattr(model, 'head'):
        fail(f'{type(model).__name__} is not a classifier; pass --backbone to export its backbone')
    for module in model.modules():
        if isinstance(module, GroupRational):
            module.use_impl('reference')  # plain ONNX operators instead of the mmkat op
    model.eval()

    class Exported(torch.nn.Module):

        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, images):
            if backbone_only:
                return self.model.backbone(images)[-1]
            return self.model(images, mode='tensor')

    return Exported().eval(), backbone


def compare(got, want, rtol=None, atol=None):
    """(problem or None, report): ``got`` (onnxruntime) against ``want`` (PyTorch), both numpy arrays, accepted
    when max |got - want| <= rtol * max(1, max |want|) + atol (rtol / atol None: the dtype's defaults)."""
    import numpy as np
    if got.shape != want.shape:
        return f'onnxruntime gives shape {got.shape}, PyTorch {want.shape}', ''
    default_rtol, default_atol = TOLERANCES.get(str(want.dtype), TOLERANCES['float32'])
    rtol = default_rtol if rtol is None else rtol
    atol = default_atol if atol is None else atol
    want64, got64 = want.astype(np.float64), got.astype(np.float64)
    scale = max(1.0, float(np.abs(want64).max())) if want.size else 1.0
    diff = float(np.abs(got64 - want64).max()) if want.size else 0.0
    bound = rtol * scale + atol
    report = (f'max |diff| {diff:.3g} = {diff / scale:.3g} of the output scale {scale:.3g} (accepted: '
              f'{bound:.3g} = rtol {rtol:g} x scale + atol {atol:g})')
    if not diff <= bound:  # NaN included
        return f'onnxruntime differs from PyTorch: {report}', report
    return None, report


def check_onnx(path, model, images, rtol=None, atol=None):
    """Run the ONNX file at ``path`` with onnxruntime on ``images`` and :func:`compare` it with ``model``."""
    import onnxruntime
    import torch
    session = onnxruntime.InferenceSession(path, providers=['CPUExecutionProvider'])
    got = session.run(None, {session.get_inputs()[0].name: images.numpy()})[0]
    with torch.no_grad():
        want = model(images).numpy()
    problem, report = compare(got, want, rtol, atol)
    return problem, report, want.shape


def main(argv=None):
    args = parse_args(argv)
    from mmkat.hub import is_remote
    for path, what in ((args.config, 'config'), (args.checkpoint, 'checkpoint')):
        if not osp.isfile(path) and not (what == 'checkpoint' and is_remote(path)):
            fail(f'{what} not found: {path}')
    if osp.exists(args.out) and not args.force:
        fail(f'--out: {args.out} exists; pass --force to replace it, or name another file')
    for flag, value in (('--rtol', args.rtol), ('--atol', args.atol)):
        if value is not None and not value >= 0:
            fail(f'{flag} must be >= 0, got {value}')
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        fail('onnxruntime is not installed (pip install onnx onnxscript onnxruntime, or bash tools/setup_env.sh)')
    import torch
    from mmengine.config import Config

    cfg = Config.fromfile(args.config)
    model, backbone = build(cfg, args.checkpoint, args.backbone)
    side = args.img_size or backbone.img_size[0]
    channels = backbone.patch_embed.proj.in_channels
    example = torch.randn(2, channels, side, side, generator=torch.Generator().manual_seed(0))
    os.makedirs(osp.dirname(osp.abspath(args.out)), exist_ok=True)
    tmp = f'{args.out}.tmp{os.getpid()}.onnx'
    try:
        with torch.no_grad():
            torch.onnx.export(model, (example, ), tmp, dynamo=True, opset_version=args.opset,
                              dynamic_shapes=({0: torch.export.Dim('batch')}, ), input_names=['images'],
                              output_names=['output'], external_data=False, verbose=False)
        check = torch.randn(3, channels, side, side, generator=torch.Generator().manual_seed(1))
        problem, report, shape = check_onnx(tmp, model, check, args.rtol, args.atol)
        if problem:
            fail(f'{problem}; {args.out} is not written')
        os.replace(tmp, args.out)
    finally:
        if osp.exists(tmp):
            os.unlink(tmp)
    what = 'backbone' if args.backbone else 'classifier'
    print(f'wrote {args.out}: the {what}, input [batch, {channels}, {side}, {side}], output {list(shape[1:])} '
          f'per image; onnxruntime matches PyTorch on a batch of 3: {report}')


if __name__ == '__main__':
    main()
