"""Training and testing helpers: torch's weights-only allowlist for mmengine checkpoints (weights_only), the
tools' data checks (data_check) and runner set-up (launch, compile, dist), the checkpoint hook (hooks), the
checkpoint a resume continues from (resume), whether a checkpoint fits a model (checkpoint_fit), and the
layer-decay optimizer-wrapper constructor (optimizers; registered on mmengine's root registry)."""
from .compile import compile_kat_modules, take_compile_option
from .data_check import config_copy_clash, explain_data_error, missing_data, report_data_errors
from .dist import setup_cpu_distributed
from .hooks import KATCheckpointHook
from .launch import build_runner, prepare_runner
from .optimizers import KATLayerDecayOptimWrapperConstructor
from .weights_only import allow_mmengine_checkpoints

__all__ = [
    'allow_mmengine_checkpoints', 'missing_data', 'KATLayerDecayOptimWrapperConstructor', 'compile_kat_modules',
    'take_compile_option', 'config_copy_clash', 'KATCheckpointHook',
    'setup_cpu_distributed', 'explain_data_error', 'report_data_errors', 'build_runner', 'prepare_runner'
]
