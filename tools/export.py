"""Export a KAT classifier (or its backbone) of an mmkat config to ONNX, and check the file with onnxruntime.

    python tools/export.py CONFIG CHECKPOINT --out model.onnx [--backbone] [--img-size 224] [--force]

The group-rational activations are exported through their reference formula (plain ONNX operators, no
custom op), the batch dimension is dynamic, and the written file is run with onnxruntime on a random batch
and compared with PyTorch (the maximal difference is printed; the tool fails above --atol). Exported:
mmpretrain classifiers (``ImageClassifier``: the logits) and, with --backbone, any config's KAT backbone (its
last output). Detectors and segmentors are not exported (their heads' post-processing is outside this tool).
Needs onnx, onnxscript and onnxruntime (tools/setup_env.sh installs them).
"""
import argparse
import os
import os.path as osp
import sys

try:  # the installed mmkat, else the one of the checkout this tool belongs to
    import mmkat  # noqa: F401
except ImportError:
    sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

PROG = 'tools/export.py'


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
    parser.add_argument('--atol', type=float, default=1e-4, help='largest accepted |onnxruntime - PyTorch| (1e-4)')
    parser.add_argument('--force', action='store_true', help='replace an existing --out file')
    return parser.parse_args(argv)


def build(cfg, checkpoint, backbone_only):
    import torch
    from mmengine.registry import MODELS, init_default_scope

    from mmkat.engine.checkpoint_fit import checkpoint_fit, read_state_dict
    from mmkat.models import KAT, GroupRational

    if cfg.get('default_scope'):
        init_default_scope(cfg.default_scope)
    model = MODELS.build(cfg.model)
    from mmkat.hub import WeightsError
    try:
        state = read_state_dict(checkpoint)  # as mmengine's loader sees the file, read once
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


def main(argv=None):
    args = parse_args(argv)
    from mmkat.hub import is_remote
    for path, what in ((args.config, 'config'), (args.checkpoint, 'checkpoint')):
        if not osp.isfile(path) and not (what == 'checkpoint' and is_remote(path)):
            fail(f'{what} not found: {path}')
    if osp.exists(args.out) and not args.force:
        fail(f'--out: {args.out} exists; pass --force to replace it, or name another file')
    try:
        import onnxruntime
    except ImportError:
        fail('onnxruntime is not installed (pip install onnx onnxscript onnxruntime, or bash tools/setup_env.sh)')
    import numpy as np
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
        session = onnxruntime.InferenceSession(tmp, providers=['CPUExecutionProvider'])
        got = session.run(None, {session.get_inputs()[0].name: check.numpy()})[0]
        with torch.no_grad():
            want = model(check).numpy()
        diff = float(np.abs(got - want).max())
        if got.shape != want.shape or not diff <= args.atol:
            fail(f'onnxruntime differs from PyTorch: shapes {got.shape} / {want.shape}, max |diff| {diff:.3g} '
                 f'(--atol {args.atol})')
        os.replace(tmp, args.out)
    finally:
        if osp.exists(tmp):
            os.unlink(tmp)
    what = 'backbone' if args.backbone else 'classifier'
    print(f'wrote {args.out}: the {what}, input [batch, {channels}, {side}, {side}], output {list(want.shape[1:])} '
          f'per image; onnxruntime matches PyTorch to {diff:.2g} (max |diff| on a batch of 3)')


if __name__ == '__main__':
    main()
