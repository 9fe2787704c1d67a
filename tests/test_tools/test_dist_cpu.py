"""tools/dist_train.sh and tools/dist_test.sh with 2 processes on the CPU (gloo): both ranks train the
same weights, rank 0 alone writes the checkpoint, and the checkpoint evaluates under dist_test.sh."""
import os
import os.path as osp
import socket
import subprocess
import textwrap
import warnings

import pytest
import torch

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
CONFIG = osp.join(ROOT, 'configs', 'kat', 'demo', 'kat_demo_shapes.py')
SMALL = ['train_dataloader.dataset.num_per_class=4', 'val_dataloader.dataset.num_per_class=2',
         'test_dataloader.dataset.num_per_class=2', 'train_cfg.max_epochs=1', 'train_dataloader.batch_size=4']

HOOK = textwrap.dedent('''
    import torch
    from mmengine.dist import get_rank
    from mmengine.hooks import Hook
    from mmengine.registry import HOOKS


    @HOOKS.register_module()
    class DumpRankWeights(Hook):
        def after_train(self, runner):
            model = runner.model.module if hasattr(runner.model, 'module') else runner.model
            torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()},
                       f'{runner.work_dir}/weights_rank{get_rank()}.pt')
''')


def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


GLOO_ABORT = 'terminate called without an active exception'


def run(script, *args, env):
    """Run a tools/ launcher script. Once, in a full-suite run on a 2-core machine, a rank of the two-process
    gloo dist_test.sh died with SIGABRT and only torch's C++ message (GLOO_ABORT), with no Python error (nine
    reruns passed); such a run is started once more, with a warning, so that this upstream abort does not fail
    the suite. Any other failure, and a second abort, fail the test."""
    for attempt in (1, 2):
        proc = subprocess.run(['bash', osp.join(ROOT, 'tools', script), *map(str, args)], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=900)
        log = proc.stdout + proc.stderr
        before_abort = log.split(GLOO_ABORT)[0]
        upstream_abort = proc.returncode != 0 and GLOO_ABORT in log and 'Traceback' not in before_abort
        if not upstream_abort or attempt == 2:
            return proc.returncode, log
        warnings.warn(f'{script}: a rank aborted inside torch ({GLOO_ABORT!r}); running it once more')
        env = dict(env, PORT=str(free_port()))


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason='the CPU path is taken only without a visible GPU')
def test_two_cpu_processes_train_identical_weights_and_test(tmp_path):
    (tmp_path / 'dump_rank_weights.py').write_text(HOOK)
    config = tmp_path / 'demo_dump.py'
    config.write_text(f"_base_ = [{CONFIG!r}]\ncustom_imports = dict(imports=['mmkat', 'dump_rank_weights'])\n"
                      "custom_hooks = [dict(type='DumpRankWeights')]\n")
    env = dict(os.environ, PYTHONPATH=f'{ROOT}:{tmp_path}', PORT=str(free_port()), OMP_NUM_THREADS='1')
    work = tmp_path / 'work'
    rc, log = run('dist_train.sh', config, 2, '--work-dir', work, '--cfg-options', *SMALL, env=env)
    assert rc == 0, log[-4000:]
    assert 'Distributed launcher: pytorch' in log or 'world_size: 2' in log.replace('World size', 'world_size')
    ranks = [torch.load(work / f'weights_rank{r}.pt') for r in (0, 1)]
    assert ranks[0].keys() == ranks[1].keys()
    for k in ranks[0]:
        assert torch.equal(ranks[0][k], ranks[1][k]), k
    checkpoints = sorted(p for p in os.listdir(work) if p.endswith('.pth'))
    assert checkpoints == ['epoch_1.pth']
    rc, log = run('dist_test.sh', CONFIG, work / 'epoch_1.pth', 2, '--work-dir', tmp_path / 'test',
                  '--cfg-options', *SMALL[2:3], env=dict(env, PORT=str(free_port())))
    assert rc == 0 and 'accuracy/top1' in log, log[-4000:]
