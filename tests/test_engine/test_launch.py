"""mmkat.engine.launch: the runner the tools build is the config's ``runner_type``. (prepare_runner's refusals
are tested with the checks they run, in test_data_check.py.)"""
from mmengine.config import Config
from mmengine.registry import RUNNERS
from mmengine.runner import Runner

from mmkat.engine import build_runner


def test_runner_type_is_honoured():

    class _MarkerRunner(Runner):

        @classmethod
        def from_cfg(cls, cfg):
            return ('built by', cls.__name__, cfg.work_dir)

    RUNNERS.register_module(name='MmkatTestMarkerRunner', module=_MarkerRunner, force=True)
    cfg = Config(dict(runner_type='MmkatTestMarkerRunner', work_dir='w', model=dict(type='X')))
    assert build_runner(cfg) == ('built by', '_MarkerRunner', 'w')
