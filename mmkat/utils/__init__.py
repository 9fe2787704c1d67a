"""Helpers for tools: inspecting the learned group-rational activations of a checkpoint."""
from .rationals import (RATIONAL_KEY_PATTERN, RationalsError, collect_rationals, evaluate_rationals,
                        load_checkpoint, plot_rationals, select_state_dict)

__all__ = [
    'RATIONAL_KEY_PATTERN', 'RationalsError', 'collect_rationals', 'evaluate_rationals', 'load_checkpoint',
    'plot_rationals', 'select_state_dict'
]
