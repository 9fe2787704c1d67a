"""Training and testing helpers: the trusted-checkpoint allowlist, the data check of the tools, the tools'
``compile`` option, and the layer-decay optimizer-wrapper constructor (registered on mmengine's root
registry)."""
from .checkpoint import allow_mmengine_checkpoints
from .compile import compile_kat_modules, take_compile_option
from .data_check import config_copy_clash, data_errors_named, explain_data_error, missing_data
from .dist import setup_cpu_distributed
from .hooks import KATCheckpointHook
from .launch import build_runner, prepare_runner
from .optimizers import KATLayerDecayOptimWrapperConstructor

__all__ = [
    'allow_mmengine_checkpoints', 'missing_data', 'KATLayerDecayOptimWrapperConstructor', 'compile_kat_modules',
    'take_compile_option', 'config_copy_clash', 'KATCheckpointHook',
    'setup_cpu_distributed', 'explain_data_error', 'data_errors_named', 'build_runner', 'prepare_runner'
]
