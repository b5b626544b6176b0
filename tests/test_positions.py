"""The one 2-D sine position code (ProSAM's reference encoder and OpenWorldSAM's soft prompts)."""

from __future__ import annotations

import math

import pytest
import torch

from samkit.positions import sine_positions


def test_channels_are_sines_and_cosines_of_row_then_column_angles():
    code = sine_positions(3, 5, 8)  # 2 frequencies: 1 and 1/10000^(1/2)
    assert code.shape == (15, 8)
    row, col = 1, 4
    row_angle, col_angle = (row + 0.5) / 3 * 2 * math.pi, (col + 0.5) / 5 * 2 * math.pi
    cell = code[row * 5 + col]
    expected = [math.sin(row_angle), math.sin(row_angle / 100), math.cos(row_angle), math.cos(row_angle / 100),
                math.sin(col_angle), math.sin(col_angle / 100), math.cos(col_angle), math.cos(col_angle / 100)]
    torch.testing.assert_close(cell, torch.tensor(expected), atol=1e-6, rtol=0)


def test_corners_grid_spans_zero_to_one_and_spare_channels_are_zero():
    code = sine_positions(4, 4, 10, temperature=100.0, grid="corners")
    assert code.shape == (16, 10) and torch.equal(code[:, 8:], torch.zeros(16, 2))
    torch.testing.assert_close(code[0, :2], torch.zeros(2))  # sin(0)
    torch.testing.assert_close(code[15, 0], torch.tensor(math.sin(2 * math.pi)), atol=1e-6, rtol=0)


@pytest.mark.parametrize("kwargs, named", [(dict(dim=2), "dim"), (dict(grid="edges"), "grid")])
def test_bad_arguments_are_named(kwargs, named):
    with pytest.raises(ValueError, match=f"^{named}: expected"):
        sine_positions(2, 2, **{"dim": 8, **kwargs})
