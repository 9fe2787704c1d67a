"""mmkat.engine.weights_only: the weights-only allowlist of allow_mmengine_checkpoints. A file restores
HistoryBuffer objects and numpy numbers, nothing else, and nothing in it can change HistoryBuffer itself for
the rest of the process."""
import pickle

import numpy as np
import pytest
import torch


@pytest.fixture
def history_buffer():
    from mmengine.logging import HistoryBuffer

    import mmkat  # noqa: F401  (registers the allowlist)
    saved = dict(HistoryBuffer._statistics_methods)
    yield HistoryBuffer
    HistoryBuffer._statistics_methods.clear()
    HistoryBuffer._statistics_methods.update(saved)


def crafted_file(path, history_buffer, methods):
    """A checkpoint whose HistoryBuffer carries ``methods`` as its statistics methods (as an attacker would
    write it: mmengine pickles the class-level dict with every buffer)."""
    buffer = history_buffer([1.0, 5.0, 3.0], [1, 1, 1])
    saved = history_buffer._statistics_methods
    history_buffer._statistics_methods = methods
    try:
        torch.save({'message_hub': {'log_scalars': {'loss': buffer}}}, path)
    finally:
        history_buffer._statistics_methods = saved


def test_a_crafted_file_cannot_rebind_historybuffer_statistics_for_the_process(tmp_path, history_buffer):
    crafted_file(tmp_path / 'crafted.pth', history_buffer, {'mean': history_buffer.max, 'max': history_buffer.max})
    with pytest.raises(pickle.UnpicklingError, match="statistics methods .*'mean'"):
        torch.load(tmp_path / 'crafted.pth', weights_only=True)
    probe = history_buffer([1.0, 5.0, 3.0], [1, 1, 1])
    assert history_buffer._statistics_methods['mean'] is history_buffer.__dict__['mean']
    assert probe.statistics('mean') == 3.0 and probe.statistics('max') == 5.0


def test_a_method_under_another_name_is_refused_too(tmp_path, history_buffer):
    crafted_file(tmp_path / 'renamed.pth', history_buffer, {'median': history_buffer.min})
    with pytest.raises(pickle.UnpicklingError, match='median'):
        torch.load(tmp_path / 'renamed.pth', weights_only=True)
    assert 'median' not in history_buffer._statistics_methods


def test_what_mmengine_writes_still_loads_as_plain_historybuffers(tmp_path, history_buffer):
    buffer = history_buffer([1.0, 5.0, 3.0], [1, 1, 1])
    torch.save({'message_hub': {'log_scalars': {'loss': buffer}}}, tmp_path / 'ok.pth')
    loaded = torch.load(tmp_path / 'ok.pth', weights_only=True)['message_hub']['log_scalars']['loss']
    assert type(loaded) is history_buffer
    assert loaded.statistics('mean') == 3.0 and loaded.current() == 3.0 and loaded.max() == 5.0
    assert set(history_buffer._statistics_methods) == {'min', 'max', 'current', 'mean'}
    # saved again (as a resumed run does), it loads again
    torch.save({'buffer': loaded}, tmp_path / 'again.pth')
    assert torch.load(tmp_path / 'again.pth', weights_only=True)['buffer'].mean() == 3.0


class _GetattrReference:
    """Pickles as getattr(HistoryBuffer, '__init__'): a getattr that mmengine never writes."""

    def __reduce__(self):
        from mmengine.logging import HistoryBuffer
        return getattr, (HistoryBuffer, '__init__')


def test_allowlist_is_narrow_and_idempotent(tmp_path):
    from mmengine.logging import HistoryBuffer

    from mmkat.engine import allow_mmengine_checkpoints

    names = allow_mmengine_checkpoints()
    size = len(torch.serialization.get_safe_globals())
    assert allow_mmengine_checkpoints() == names
    assert len(torch.serialization.get_safe_globals()) == size
    assert 'builtins.getattr' in names and 'mmengine.logging.history_buffer.HistoryBuffer' in names
    allowed = [g[0] if isinstance(g, tuple) else g for g in torch.serialization.get_safe_globals()]
    assert getattr not in allowed  # the real getattr is never allowed

    # what mmengine writes loads, with weights_only=True
    buffer = HistoryBuffer([1.0, 3.0], [1, 1])
    torch.save({'buffer': buffer, 'eta': np.float64(2.5), 'array': np.arange(3)}, tmp_path / 'ok.pth')
    loaded = torch.load(tmp_path / 'ok.pth', weights_only=True)
    assert loaded['buffer'].mean() == 2.0 and loaded['buffer'].statistics('max') == 3.0
    assert loaded['eta'] == 2.5 and loaded['array'].tolist() == [0, 1, 2]

    # any other getattr, and numpy arrays of Python objects, are still refused
    torch.save({'x': _GetattrReference()}, tmp_path / 'getattr.pth')
    with pytest.raises(pickle.UnpicklingError, match='is not allowed'):
        torch.load(tmp_path / 'getattr.pth', weights_only=True)
    torch.save({'x': np.array([1, 'a'], dtype=object)}, tmp_path / 'objects.pth')
    with pytest.raises(pickle.UnpicklingError):
        torch.load(tmp_path / 'objects.pth', weights_only=True)
