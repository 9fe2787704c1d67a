"""What tools/train.py and tools/test.py do alike once the config is merged: refuse what would lose a user's
file or data, then build the runner (the config's ``runner_type``, default ``Runner``) ready to run."""
from typing import Callable, Optional, Sequence

from .compile import compile_kat_modules, take_compile_option
from .data_check import annotation_problems, config_copy_clash, missing_data, report_data_errors
from .dist import setup_cpu_distributed


def build_runner(cfg):
    """Build the runner the config asks for (``runner_type``, default ``Runner``) via its ``from_cfg``."""
    from mmengine.registry import RUNNERS, init_default_scope

    if cfg.get('default_scope'):
        # look runner_type up in the config's scope (e.g. a runner registered in mmdet.registry.RUNNERS)
        init_default_scope(cfg.default_scope)
    return RUNNERS.build(cfg)  # calls <runner class>.from_cfg(cfg)


def prepare_runner(cfg, config_path: str, loaders: Sequence[str], purpose: str, fail: Callable[[str], None],
                   before_build: Optional[Callable[[], None]] = None):
    """Check and build: the config copy must not overwrite ``config_path``, the data of ``loaders`` must be
    there (``purpose`` words the message, e.g. 'trains on') and fit its annotation files, images are loaded
    by KATLoadImageFromFile, a ``compile`` entry compiles the KAT modules in
    place, torchrun without a GPU uses gloo. (mmengine's checkpoints load with weights_only through the
    allowlist ``import mmkat`` registers.) ``fail`` reports
    a refusal (and does not return).

    ``before_build`` runs after the checks and before the runner is built: the last moment at which the work
    dir is as it was (mmengine's Runner constructor writes the config copy and a time-stamped log folder
    into it), e.g. to refuse a work dir another run is using."""
    clash = config_copy_clash(cfg.work_dir, config_path)
    if clash:
        fail(clash)
    missing = missing_data(cfg, loaders)
    if missing:
        fail(f'the data this config {purpose} is not there:\n  ' + '\n  '.join(missing))
    problems = annotation_problems(cfg, loaders)  # image sizes against their entries, empty lists
    if problems:
        fail('the data does not fit its annotation files:\n  ' + '\n  '.join(problems))
    from mmkat.datasets.transforms import name_unreadable_images
    name_unreadable_images(cfg)  # images loaded by KATLoadImageFromFile, whose errors name the file
    if before_build is not None:
        before_build()
    compile_kwargs = take_compile_option(cfg)  # mmengine's compile=True cannot trace its optimizer step
    setup_cpu_distributed(cfg)  # torchrun on a machine without a GPU: gloo
    with report_data_errors(cfg, fail):  # building a dataset may read its annotation file
        runner = build_runner(cfg)
    from .model_check import check_channels
    check_channels(runner.model, fail)  # a head left at another backbone's channels, named before any forward
    if compile_kwargs is not None:
        compile_kat_modules(runner.model, compile_kwargs)
    return runner


__all__ = ['build_runner', 'prepare_runner']
