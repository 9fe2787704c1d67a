"""The weights-only allowlist of mmkat.engine.allow_mmengine_checkpoints: a file restores HistoryBuffer
objects, and nothing in it can change HistoryBuffer itself for the rest of the process."""
import pickle

import pytest
import torch


@pytest.fixture
def history_buffer():
    import mmkat  # noqa: F401  (registers the allowlist)
    from mmengine.logging import HistoryBuffer
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
