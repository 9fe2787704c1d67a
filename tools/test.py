"""Evaluate a checkpoint on the test set of any mmengine config (mmpretrain, mmdet, mmseg).

Examples::

    python tools/test.py CONFIG CHECKPOINT                       # prints the test metrics
    python tools/test.py CONFIG CHECKPOINT --out preds.pkl       # also dumps the predictions
    python tools/test.py configs/kat/kat_s_in1k_released.py      # the config's load_from (released weights)
    bash tools/dist_test.sh CONFIG CHECKPOINT 8                  # 8 GPUs on this machine (torchrun)

CHECKPOINT can be a training checkpoint written by tools/train.py (mmengine's format), a state dict such as
one converted by mmkat's tools, a .safetensors file, a URL, hf_hub:OWNER/REPO or an mmkat weights name
(configs/kat/metafile.yml; downloaded once and verified, see mmkat/hub.py). Without it, the config's
load_from is tested.
"""
import argparse
import os
import os.path as osp
import sys

try:  # the installed mmkat, else the one of the checkout this tool belongs to
    import mmkat  # noqa: F401
except ImportError:
    sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

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
    parser.add_argument('--force', action='store_true', help='let --out replace an existing file')
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


def main(argv=None):
    args = parse_args(argv)
    if not osp.isfile(args.config):
        fail(f'config file not found: {args.config}')
    from mmkat.hub import is_remote
    if args.checkpoint and not is_remote(args.checkpoint) and '://' not in args.checkpoint \
            and not osp.isfile(args.checkpoint):
        fail(f'checkpoint not found: {args.checkpoint} (expected a file, a URL, hf_hub:OWNER/REPO or an mmkat '
             'weights name from configs/kat/metafile.yml)')
    if args.out is not None and not args.out.endswith(('.pkl', '.pickle')):
        fail(f'--out must name a .pkl or .pickle file, got {args.out}')
    if args.out is not None and osp.exists(args.out) and not args.force:
        fail(f'--out: {args.out} exists; pass --force to replace it, or name another file')

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
    if not is_remote(checkpoint) and '://' not in checkpoint and not osp.isfile(checkpoint):
        fail(f'checkpoint not found: {checkpoint} (expected a file, a URL, hf_hub:OWNER/REPO or an mmkat weights '
             'name from configs/kat/metafile.yml)')
    cfg.load_from = checkpoint
    cfg.resume = False

    from mmengine.evaluator import DumpResults

    from mmkat.engine import data_errors_named, prepare_runner
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

    with data_errors_named(cfg, fail):
        runner.test()


if __name__ == '__main__':
    main()
