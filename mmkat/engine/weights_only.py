"""Resuming mmengine training checkpoints while ``torch.load`` stays ``weights_only=True``.

From torch 2.6, ``torch.load`` reads files with ``weights_only=True`` unless told otherwise: the unpickler
only rebuilds tensors, containers and the globals put on an allowlist. mmengine 0.10.7 saves more than that
in its training checkpoints (the ``message_hub`` entry holds ``HistoryBuffer`` objects backed by numpy
arrays, numpy scalars, and references to ``HistoryBuffer``'s statistics methods), so ``runner.resume()``
fails with ``UnpicklingError``. :func:`allow_mmengine_checkpoints` puts those globals on the allowlist
(with numpy's other fixed-width number dtypes) and nothing else; ``weights_only`` itself stays on.
"""
import pickle
import re
from typing import List

import torch

__all__ = ['allow_mmengine_checkpoints']

# HistoryBuffer's default statistics methods. HistoryBuffer pickles its class-level ``_statistics_methods``
# dict, and pickle (protocol 2, torch.save's default) writes each of these functions as
# ``getattr(HistoryBuffer, '<name>')``.
_HISTORY_BUFFER_METHODS = ('min', 'max', 'current', 'mean')

# numpy dtypes allowed inside arrays and scalars: fixed-width numbers and bool, no object, string, void or
# datetime dtypes. mmengine's own checkpoints hold float64 and int64 (HistoryBuffer's history arrays, the
# 'eta' scalar in the message hub); the rest of the numeric family is listed so that a value logged as, say,
# a float32 or an int32 (numpy's default int on Windows) does not break a resume.
_NUMPY_DTYPES = ('bool', 'int8', 'int16', 'int32', 'int64', 'uint8', 'uint16', 'uint32', 'uint64', 'float16',
                 'float32', 'float64')

_allowed: List[str] = []


def _history_buffer_getattr(obj, name):
    """Stands in for ``builtins.getattr`` while unpickling, and only resolves HistoryBuffer's statistics.

    Registered under the name ``builtins.getattr`` on torch's allowlist, so that the reference
    ``getattr(HistoryBuffer, 'mean')`` in a pickle resolves. The real ``getattr`` is never allowlisted: it
    would let a file reach any attribute of any allowed object. Anything other than one of the four
    statistics methods of ``HistoryBuffer`` itself is refused.
    """
    from mmengine.logging import HistoryBuffer

    # in a file, HistoryBuffer's global name resolves to its stand-in, _RestoredHistoryBuffer
    if obj in (HistoryBuffer, _RestoredHistoryBuffer) and isinstance(name, str) and name in _HISTORY_BUFFER_METHODS:
        return HistoryBuffer.__dict__[name]
    owner = obj.__qualname__ if isinstance(obj, type) else type(obj).__name__ + ' object'
    raise pickle.UnpicklingError(
        f'weights_only load: getattr({owner}, {name!r}) in the file is not allowed. mmkat only allows '
        f'getattr(HistoryBuffer, name) for name in {_HISTORY_BUFFER_METHODS}, which mmengine checkpoints '
        'use.')


class _RestoredHistoryBuffer:
    """Stands in for ``HistoryBuffer`` while unpickling and restores one without touching the class.

    ``HistoryBuffer.__setstate__`` copies the file's ``statistics_methods`` into the class-level
    ``_statistics_methods`` dict, so a crafted file could rebind, say, ``'mean'`` to ``HistoryBuffer.max`` for
    the whole process. Registered under HistoryBuffer's name on torch's allowlist, this class is what the
    unpickler instantiates; its ``__setstate__`` accepts ``statistics_methods`` only when every entry is one of
    HistoryBuffer's own four statistics under its own name (what mmengine writes), never updates the class
    dict, and then turns the object into a plain ``HistoryBuffer``.
    """

    def __setstate__(self, state):
        from mmengine.logging import HistoryBuffer

        if not isinstance(state, dict):
            raise pickle.UnpicklingError(f'weights_only load: a HistoryBuffer state must be a dict, got '
                                         f'{type(state).__name__}')
        state = dict(state)
        methods = state.pop('statistics_methods', {})
        if not isinstance(methods, dict) or any(
                name not in _HISTORY_BUFFER_METHODS or method is not HistoryBuffer.__dict__[name]
                for name, method in methods.items()):
            shown = {k: getattr(v, '__qualname__', repr(v)) for k, v in dict(methods).items()} \
                if isinstance(methods, dict) else methods
            raise pickle.UnpicklingError(
                f'weights_only load: the file gives HistoryBuffer the statistics methods {shown}; mmkat only allows '
                f'each of {_HISTORY_BUFFER_METHODS} mapped to HistoryBuffer\'s own method of that name')
        if '_statistics_methods' in state:
            raise pickle.UnpicklingError('weights_only load: a HistoryBuffer state may not set _statistics_methods')
        self.__class__ = HistoryBuffer
        self._set_default_statistics()  # setdefault of the four defaults on the class: what __init__ does
        self.__dict__.update(state)


def _torch_supports_named_globals() -> bool:
    # add_safe_globals accepts (global, 'module.name') pairs from torch 2.6, the release that also made
    # weights_only=True the default. Before it, torch.load unpickles everything and nothing is needed.
    match = re.match(r'(\d+)\.(\d+)', torch.__version__)
    version = (int(match.group(1)), int(match.group(2))) if match else (0, 0)
    return hasattr(torch.serialization, 'add_safe_globals') and version >= (2, 6)


def allow_mmengine_checkpoints() -> List[str]:
    """Let ``torch.load`` (with its default ``weights_only=True``) read mmengine's own training checkpoints.

    Adds these globals to torch's weights-only allowlist (``torch.serialization.add_safe_globals``):

    - ``mmengine.logging.history_buffer.HistoryBuffer``, as :class:`_RestoredHistoryBuffer`: the message
      hub's logged scalars. The object is created with ``__new__`` and filled by a ``__setstate__`` that
      stores the state dict (whose values come out of the same restricted unpickler), accepts only
      HistoryBuffer's own statistics methods under their own names and never changes the class (mmengine's
      own ``__setstate__`` would copy a file's methods into the class for the whole process).
    - ``builtins.getattr``, as :func:`_history_buffer_getattr`: resolves only
      ``getattr(HistoryBuffer, 'min' | 'max' | 'current' | 'mean')``, the form in which pickle writes
      HistoryBuffer's statistics methods. The real ``getattr`` stays off the allowlist.
    - ``numpy.core.multiarray._reconstruct`` (also under its numpy 2 name ``numpy._core.multiarray``),
      ``numpy.ndarray``, ``numpy.dtype``, ``numpy.core.multiarray.scalar``: numpy arrays and scalars of
      HistoryBuffer and the message hub, rebuilt from raw bytes.
    - the dtype classes of numpy's fixed-width numbers and bool (``numpy.dtypes.Float64DType``, ...): an
      array or scalar can only be rebuilt when its dtype object's class is allowed, so arrays of objects,
      strings, structured or datetime values are still refused.

    Why this is safe: everything else about the load is unchanged. ``weights_only`` stays on for every
    file, tensors are still rebuilt by torch's own code, and the allowed globals either hold plain data
    (numbers and arrays of numbers) or, for HistoryBuffer, store plain data without running other code.
    A file can still not call any other function or build any other class. The extra globals are the ones
    mmengine writes into checkpoints it saved itself during training (found by training a model, saving,
    and listing what ``torch.serialization.get_unsafe_globals_in_checkpoint`` reports); downloaded or
    otherwise untrusted weights get no other leeway than these inert types.

    Not covered: state that mmengine pickles from other objects (for example the bound ``anneal_func`` of
    ``OneCycleParamScheduler``) or statistics methods registered by users; torch's error names the global.

    The call is cheap and idempotent (the allowlist is a set and the work is done once per process). It
    imports numpy and mmengine.logging, never mmdet, mmseg or mmpretrain. With torch older than 2.6 it does
    nothing, since those releases do not load weights-only by default.

    Returns:
        list[str]: the names of the allowed globals (empty with torch < 2.6).
    """
    if _allowed or not _torch_supports_named_globals():
        return list(_allowed)

    import numpy as np
    try:  # numpy >= 1.26 has numpy._core (numpy 2's name); numpy.core warns under numpy 2
        from numpy._core import multiarray
    except ImportError:  # pragma: no cover - numpy < 1.26
        from numpy.core import multiarray
    entries = [
        (_RestoredHistoryBuffer, 'mmengine.logging.history_buffer.HistoryBuffer'),
        (_history_buffer_getattr, 'builtins.getattr'),
        (np.ndarray, 'numpy.ndarray'),
        (np.dtype, 'numpy.dtype'),
    ]
    for module in ('numpy.core.multiarray', 'numpy._core.multiarray'):
        entries.append((multiarray._reconstruct, f'{module}._reconstruct'))
        entries.append((multiarray.scalar, f'{module}.scalar'))
    for name in _NUMPY_DTYPES:
        dtype_class = type(np.dtype(name))
        entries.append((dtype_class, f'{dtype_class.__module__}.{dtype_class.__qualname__}'))

    torch.serialization.add_safe_globals(entries)
    _allowed.extend(name for _, name in entries)
    return list(_allowed)
