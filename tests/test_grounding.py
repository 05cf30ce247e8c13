"""The side reader, its map and its targets (tdseg_lite/grounding.py) on fixed tensors."""

from __future__ import annotations

import pytest
import torch

from tdseg_lite.errors import UserInputError
from tdseg_lite.grounding import (
    SideReader,
    half_targets,
    pretrain_side_reader,
    side_loss,
    side_map,
    volume_half_targets,
)
from tdseg_lite.positions import volume_coordinates


def axis_coords(batch: int, shape: tuple[int, int, int] = (8, 6, 6)) -> torch.Tensor:
    """The side-axis (0) volume coordinate of every voxel: (B, 1, X, Y, Z), < 0 for x < X/2."""
    return volume_coordinates(shape)[None, :1].expand(batch, -1, -1, -1, -1)


def test_half_targets_say_which_halves_hold_the_lesion() -> None:
    labels = torch.zeros(4, 1, 8, 6, 6, dtype=torch.long)
    labels[0, 0, 1, 2, 2] = 2          # half a only (x index 1 of 8: coordinate < 0)
    labels[1, 0, 6, 2, 2] = 2          # half b only
    labels[2, 0, 1, 2, 2] = labels[2, 0, 6, 3, 3] = 2   # both
    labels[3, 0, 1:7] = 1              # kidney everywhere, no lesion
    out = half_targets(labels, axis_coords(4), lesion_class=2)
    assert out.tolist() == [[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.0, 0.0]]
    assert half_targets(labels, axis_coords(4), lesion_class=1)[3].tolist() == [1.0, 1.0]
    with pytest.raises(UserInputError, match="coords"):
        half_targets(labels, axis_coords(3), lesion_class=2)


def test_volume_half_targets_split_the_chosen_axis() -> None:
    volume = torch.zeros(8, 6, 4, dtype=torch.long)
    volume[1, 4, 1] = 2                          # axis 0: half a; axis 1: half b
    assert volume_half_targets(volume, 0, 2).tolist() == [1.0, 0.0]
    assert volume_half_targets(volume, 1, 2).tolist() == [0.0, 1.0]
    assert volume_half_targets(volume, 0, 1).tolist() == [0.0, 0.0]


def test_pretrain_rejects_mismatched_targets() -> None:
    with pytest.raises(UserInputError, match="targets"):
        pretrain_side_reader(SideReader(16), None, ["a", "b"], torch.zeros(3, 2), steps=1)


def test_side_map_paints_each_half_with_its_probability() -> None:
    coords = axis_coords(2)
    logits = torch.tensor([[0.0, 3.0], [-2.0, 1.0]])
    m = side_map(logits, coords)
    assert m.shape == (2, 1, 8, 6, 6)
    p = torch.sigmoid(logits)
    for b in range(2):
        assert torch.allclose(m[b, 0, :4], p[b, 0].expand(4, 6, 6))   # x < 0: half a
        assert torch.allclose(m[b, 0, 4:], p[b, 1].expand(4, 6, 6))   # x >= 0: half b
    with pytest.raises(UserInputError, match="coords"):
        side_map(logits, coords[:1])


def test_reader_ignores_padding_and_learns_two_reports_apart() -> None:
    torch.manual_seed(0)
    reader = SideReader(text_dim=16, width=16)
    tokens, mask = torch.randn(2, 5, 16), torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    padded = torch.cat([tokens, torch.randn(2, 3, 16)], dim=1)
    padded_mask = torch.cat([mask, torch.zeros(2, 3, dtype=torch.long)], dim=1)
    torch.testing.assert_close(reader(tokens, mask), reader(padded, padded_mask))
    targets = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    opt = torch.optim.Adam(reader.parameters(), lr=1e-2)
    for _ in range(60):
        loss = side_loss(reader(tokens, mask), targets)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert ((torch.sigmoid(reader(tokens, mask)) > 0.5).float() == targets).all()
