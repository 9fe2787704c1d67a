from .presets import get_preset, preset_names
from .rational import (
    ENV_IMPL,
    IMPLEMENTATIONS,
    NUM_DENOMINATOR,
    NUM_NUMERATOR,
    extension_info,
    group_rational,
    group_rational_bias,
    group_rational_compiled,
    group_rational_direct,
    group_rational_linear,
    group_rational_reference,
    group_rational_reference_backward,
)

__all__ = [
    'group_rational', 'group_rational_reference', 'group_rational_compiled', 'group_rational_reference_backward',
    'group_rational_direct', 'group_rational_linear', 'group_rational_bias', 'extension_info', 'get_preset',
    'preset_names', 'IMPLEMENTATIONS', 'ENV_IMPL', 'NUM_NUMERATOR', 'NUM_DENOMINATOR'
]
