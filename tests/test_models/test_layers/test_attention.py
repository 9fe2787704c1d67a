"""mmkat.models.layers.attention's window helpers (the attention itself is tested inside the backbone,
tests/test_models/test_backbones/test_kat.py)."""
import torch

from mmkat.models.layers.attention import relative_position_table, window_merge, window_partition


def test_window_partition_round_trip_and_relative_table():
    x = torch.randn(2, 5, 7, 3)
    windows, padded = window_partition(x, 3)
    assert windows.shape == (2 * 2 * 3, 3, 3, 3) and padded == (6, 9)
    assert torch.equal(window_merge(windows, 3, padded, (5, 7)), x)
    table = torch.arange(5.).unsqueeze(1)  # made for length 3: offsets -2..2
    rel = relative_position_table(3, 3, table)
    assert rel[..., 0].tolist() == [[2, 1, 0], [3, 2, 1], [4, 3, 2]]  # index = q - k + 2
