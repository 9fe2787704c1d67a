"""Init presets of the group-rational function, read from the packaged rational_presets.json."""
import json
import os
from functools import lru_cache
from typing import Dict, List, Tuple, Union

_PRESET_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'rational_presets.json')


@lru_cache(maxsize=None)
def _presets() -> Dict[str, dict]:
    with open(_PRESET_FILE) as f:
        data = json.load(f)
    return {k: v for k, v in data.items() if not k.startswith('_')}


def preset_names() -> List[str]:
    """Names of the packaged presets (identity, swish, gelu)."""
    return sorted(_presets())


def get_preset(init: Union[str, dict]) -> Tuple[List[float], List[float]]:
    """(numerator [6], denominator [4]) of a named preset, or of a dict with those two keys."""
    from .rational import NUM_DENOMINATOR, NUM_NUMERATOR
    if isinstance(init, str):
        if init not in _presets():
            raise KeyError(f'unknown rational init preset {init!r}; expected one of {preset_names()} or '
                           "dict(numerator=[6 floats], denominator=[4 floats])")
        entry = _presets()[init]
    elif isinstance(init, dict):
        if set(init) - {'numerator', 'denominator', 'target'} or not {'numerator', 'denominator'} <= set(init):
            raise KeyError('a custom rational init must be dict(numerator=[6 floats], denominator=[4 floats]), '
                           f'got keys {sorted(init)}')
        entry = init
    else:
        raise TypeError(f'rational init must be a preset name or a dict, got {type(init).__name__}')
    num, den = [float(v) for v in entry['numerator']], [float(v) for v in entry['denominator']]
    if len(num) != NUM_NUMERATOR or len(den) != NUM_DENOMINATOR:
        raise ValueError(f'a rational init needs {NUM_NUMERATOR} numerator and {NUM_DENOMINATOR} denominator '
                         f'coefficients, got {len(num)} and {len(den)}')
    return num, den
