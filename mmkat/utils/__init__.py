"""Helpers for tools: the learned group-rational activations of a state dict; saving benchmark results."""
from .rationals import RATIONAL_KEY_PATTERN, RationalsError, collect_rationals, evaluate_rationals
from .results import save_results

__all__ = ['RATIONAL_KEY_PATTERN', 'RationalsError', 'collect_rationals', 'evaluate_rationals', 'save_results']
