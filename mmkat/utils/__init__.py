"""Helpers for tools: inspecting the learned group-rational activations of a checkpoint; saving benchmark
results."""
from .rationals import (RATIONAL_KEY_PATTERN, RationalsError, collect_rationals, evaluate_rationals,
                        load_checkpoint, plot_rationals, select_state_dict)
from .results import save_results

__all__ = [
    'RATIONAL_KEY_PATTERN', 'RationalsError', 'collect_rationals', 'evaluate_rationals', 'load_checkpoint',
    'plot_rationals', 'save_results', 'select_state_dict'
]
