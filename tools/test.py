"""Evaluate a checkpoint on the test set of any mmengine config (mmpretrain, mmdet, mmseg).

Examples::

    python tools/test.py CONFIG CHECKPOINT                       # prints the test metrics
    python tools/test.py CONFIG CHECKPOINT --out preds.pkl       # also dumps the predictions
    python tools/test.py CONFIG CHECKPOINT --show-dir vis        # also draws every prediction into vis/
    python tools/test.py configs/kat/kat_s_in1k_released.py      # the config's load_from (released weights)
    bash tools/dist_test.sh CONFIG CHECKPOINT 8                  # 8 GPUs on this machine (torchrun)

CHECKPOINT can be a training checkpoint written by tools/train.py (mmengine's format), a state dict such as
one converted by mmkat's tools, a .safetensors file, a URL, hf_hub:OWNER/REPO or an mmkat weights name
(configs/kat/metafile.yml; downloaded once and verified, see mmkat/hub.py). Without it, the config's
load_from is tested.

--show-dir and --show switch on the visualization hook of the config's scope, as mmdet's, mmseg's and
mmpretrain's own tools/test.py do (``default_hooks.visualization``; added with the scope's visualizer where
the config has none), drawing every test image: mmdet's ``DetVisualizationHook`` writes DIR/<image name>
(boxes scoring above its ``score_thr``, 0.3), mmpretrain's ``VisualizationHook`` writes DIR/<image name>_0.png.
For mmseg a subclass of its ``SegVisualizationHook`` writes DIR/<image name> (ground truth beside the
prediction, as mmseg draws them): mmseg's own hook reads ``runner.iter``, which builds the training loop and
so needs the training data, and saves only through the visualizer's storage backends. The pictures are named
after the image file's base name, as the scopes' hooks name them: test images of one name in different
folders share one picture.
"""
import argparse
import os
import os.path as osp
import sys

import mmkat  # noqa: F401  (registers mmkat's modules, checkpoint allowlist and weights references)

PROG = 'tools/test.py'


def fail(message):
    """Stop with a one-line error on stderr and exit status 1."""
    sys.exit(f'{PROG}: error: {message}')


def parse_args(argv=None):
    from mmengine.config import DictAction

    parser = argparse.ArgumentParser(prog=PROG,
                                     description='Test (evaluate) a checkpoint with an mmengine config.')
    parser.add_argument('config', help='config file (.py)')
    parser.add_argument(
        'checkpoint', nargs='?',
        help="a checkpoint file, URL, hf_hub:OWNER/REPO or mmkat weights name (default: the config's load_from)")
    parser.add_argument(
        '--work-dir',
        help="folder for the logs and metrics file (default: the config's work_dir, else "
        './work_dirs/<config file name without .py>)')
    parser.add_argument(
        '--out', metavar='FILE.pkl',
        help="also dump the raw predictions to this pickle file (mmengine's DumpResults metric); an existing "
        'file is kept unless --force')
    parser.add_argument(
        '--show-dir', metavar='DIR',
        help='draw each test image with its prediction and save it under DIR (see the tool doc for the file '
        'names of each task); a DIR that holds files is kept unless --force')
    parser.add_argument('--show', action='store_true',
                        help='display each test image with its prediction in a window (needs a display)')
    parser.add_argument('--wait-time', type=float, default=2., metavar='SECONDS',
                        help='how long --show displays each image (default 2 s; 0 waits for a key press)')
    parser.add_argument('--force', action='store_true',
                        help='let --out replace an existing file and --show-dir write into a folder that holds files')
    parser.add_argument(
        '--allow-partial', action='store_true',
        help='evaluate a checkpoint even when it leaves model parameters unloaded, has tensors of other '
        'shapes or holds NaN/inf (by default such a checkpoint is refused, since its metrics would not be '
        "the checkpoint's)")
    parser.add_argument(
        '--cfg-options', nargs='+', action=DictAction, metavar='KEY=VALUE',
        help='override config entries, e.g. test_dataloader.batch_size=8; lists as key="[a,b]" or '
        'key=a,b, quoted and without spaces')
    parser.add_argument(
        '--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'], default='none',
        help='job launcher (tools/dist_test.sh sets it)')
    # torch.distributed.launch passes --local-rank (torch >= 2.0) or --local_rank (older releases)
    parser.add_argument('--local-rank', '--local_rank', type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if 'LOCAL_RANK' not in os.environ:
        os.environ['LOCAL_RANK'] = str(args.local_rank)
    return args


# the visualization hook and visualizer of each scope, as their own test tools switch them on
VIS_HOOKS = {'mmdet': 'DetVisualizationHook', 'mmseg': 'SegVisualizationHook', 'mmpretrain': 'VisualizationHook'}
VISUALIZERS = {'mmdet': 'DetLocalVisualizer', 'mmseg': 'SegLocalVisualizer', 'mmpretrain': 'UniversalVisualizer'}


def check_checkpoint_exists(ref):
    """Stop unless ``ref`` is a local file or a reference fetched when it is loaded (a URL or other storage,
    hf_hub:, an mmkat weights name)."""
    from mmkat.hub import is_remote
    if not is_remote(ref) and '://' not in ref and not osp.isfile(ref):
        fail(f'checkpoint not found: {ref} (expected a file, a URL, hf_hub:OWNER/REPO or an mmkat weights name '
             'from configs/kat/metafile.yml)')


def has_display() -> bool:
    """Can a window be shown? On Linux and the BSDs only with an X11 or Wayland display."""
    if sys.platform.startswith(('linux', 'freebsd', 'openbsd', 'netbsd')):
        return bool(os.environ.get('DISPLAY') or os.environ.get('WAYLAND_DISPLAY'))
    return True


def enable_visualization(cfg, show_dir, show, wait_time):
    """Switch the config's visualization hook on for every test image, as the scope's own tools/test.py does:
    draw, save under ``show_dir`` (absolute, so that mmdet's hook does not nest it in the work dir), show."""
    scope = cfg.get('default_scope')
    if scope not in VIS_HOOKS:
        fail(f"--show-dir / --show: the config's default_scope {scope!r} is not one of {sorted(VIS_HOOKS)}, whose "
             'visualization hooks this tool knows')
    cfg.setdefault('default_hooks', {})
    hook = cfg.default_hooks.get('visualization') or dict(type=VIS_HOOKS[scope])
    if not cfg.get('visualizer'):
        cfg.visualizer = dict(type=VISUALIZERS[scope], vis_backends=[dict(type='LocalVisBackend')], name='visualizer')
    if show:
        hook.update(show=True, wait_time=wait_time)
    out_dir = osp.abspath(show_dir) if show_dir else None
    if scope == 'mmpretrain':
        hook.update(enable=True, interval=1, **({'out_dir': out_dir} if out_dir else {}))
    elif scope == 'mmdet':
        hook.update(draw=True, **({'test_out_dir': out_dir} if out_dir else {}))
    else:  # mmseg: its hook's subclass below
        hook.pop('_scope_', None)
        hook.update(type=register_seg_test_hook(), draw=True, out_dir=out_dir)
    cfg.default_hooks['visualization'] = hook


def register_seg_test_hook() -> str:
    """Register (in mmseg's HOOKS) and name a ``SegVisualizationHook`` that draws every test image into a
    folder itself, without touching ``runner.iter`` (which would build the training loop and its data)."""
    import mmcv
    from mmengine import fileio
    from mmseg.engine.hooks import SegVisualizationHook
    from mmseg.registry import HOOKS

    class KATSegTestVisualizationHook(SegVisualizationHook):

        def __init__(self, out_dir=None, **kwargs):
            super().__init__(**kwargs)
            self.out_dir = out_dir

        def after_test_iter(self, runner, batch_idx, data_batch, outputs):
            if not self.draw:
                return
            if self.out_dir:
                os.makedirs(self.out_dir, exist_ok=True)
            for output in outputs:
                name = osp.basename(output.img_path)
                image = mmcv.imfrombytes(fileio.get(output.img_path, backend_args=self.backend_args),
                                         channel_order='rgb')
                self._visualizer.add_datasample(
                    f'test_{name}', image, data_sample=output, show=self.show, wait_time=self.wait_time,
                    out_file=osp.join(self.out_dir, name) if self.out_dir else None, step=batch_idx)

    HOOKS.register_module(name=KATSegTestVisualizationHook.__name__, module=KATSegTestVisualizationHook, force=True)
    return KATSegTestVisualizationHook.__name__


def main(argv=None):
    args = parse_args(argv)
    if not osp.isfile(args.config):
        fail(f'config file not found: {args.config}')
    if args.checkpoint:
        check_checkpoint_exists(args.checkpoint)
    if args.out is not None and not args.out.endswith(('.pkl', '.pickle')):
        fail(f'--out must name a .pkl or .pickle file, got {args.out}')
    if args.out is not None and osp.exists(args.out) and not args.force:
        fail(f'--out: {args.out} exists; pass --force to replace it, or name another file')
    if args.show_dir is not None and osp.exists(args.show_dir) and not osp.isdir(args.show_dir):
        fail(f'--show-dir: {args.show_dir} is a file, not a folder')
    if args.show_dir is not None and osp.isdir(args.show_dir) and os.listdir(args.show_dir) and not args.force:
        fail(f'--show-dir: {args.show_dir} already holds files; pass --force to write into it, or name another '
             'folder')
    if args.show and not has_display():
        fail('--show needs a display to open windows on, and none is set (DISPLAY / WAYLAND_DISPLAY); save the '
             'pictures with --show-dir DIR instead')

    from mmengine.config import Config

    cfg = Config.fromfile(args.config)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    cfg.launcher = args.launcher
    if args.work_dir is not None:
        cfg.work_dir = args.work_dir
    elif not cfg.get('work_dir'):
        cfg.work_dir = osp.join('./work_dirs', osp.splitext(osp.basename(args.config))[0])
    if not cfg.get('test_dataloader') or not cfg.get('test_evaluator') or cfg.get('test_cfg') is None:
        fail('the config needs test_dataloader, test_evaluator and test_cfg to test a model')
    checkpoint = args.checkpoint or cfg.get('load_from')
    if not checkpoint:
        fail(f'no checkpoint: give CHECKPOINT, or set load_from in {args.config}')
    check_checkpoint_exists(checkpoint)
    cfg.load_from = checkpoint
    cfg.resume = False
    if args.show_dir is not None or args.show:
        enable_visualization(cfg, args.show_dir, args.show, args.wait_time)

    from mmengine.evaluator import DumpResults

    from mmkat.engine import prepare_runner, report_data_errors
    runner = prepare_runner(cfg, args.config, ('test_dataloader', ), 'tests on', fail)

    # does it fill the model? (mmengine only logs what it could not place)
    from mmkat.engine.checkpoint_fit import checkpoint_fit
    from mmkat.hub import WeightsError
    try:
        problems = checkpoint_fit(runner.model, checkpoint).problems()
    except (ValueError, WeightsError) as e:
        fail(str(e))
    if problems and not args.allow_partial:
        fail(f'{checkpoint} does not fit the model of {args.config}; its metrics would not be the '
             "checkpoint's:\n  " + '\n  '.join(problems) +
             '\n  (--allow-partial evaluates it anyway)')
    for problem in problems:
        print(f'{PROG}: warning (--allow-partial): {problem}', file=sys.stderr)

    if args.out is not None:
        out_dir = osp.dirname(osp.abspath(args.out))
        os.makedirs(out_dir, exist_ok=True)
        runner.test_evaluator.metrics.append(DumpResults(out_file_path=args.out))

    with report_data_errors(cfg, fail):
        runner.test()


if __name__ == '__main__':
    main()
