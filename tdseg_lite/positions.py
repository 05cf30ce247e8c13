"""Where a voxel is: normalised volume coordinates that travel with crops, and their Fourier features.

A report says "the lower pole of the left kidney". To tie "left" to a place, the network must know
where a voxel lies in the patient, but a training patch (64³ of a 96 × 95 × 64 volume) or an
inference window does not tell where it was cut from. So every voxel gets its coordinates in the
*whole preprocessed volume* (RAS, cropped to the body), scaled to [−1, 1] per axis::

    c(i, j, l) = (2 i / (X − 1) − 1,  2 j / (Y − 1) − 1,  2 l / (Z − 1) − 1)      (3, X, Y, Z)

With the body crop of ``data.py`` the volume is the body's bounding box (plus a margin), so
c ≈ the position in the body: x < 0 on the patient's left (RAS: index grows towards the right),
z > 0 towards the head. The coordinates are made for the whole volume *before* the random crop
(``AddCoordinates`` in the training chain; ``sliding_window_predict`` at inference) and are then
cropped, flipped and warped together with the image, so that a patch keeps the coordinates of
where its voxels came from. Intensity augmentation never touches them.

``fourier_features`` turns c into sin/cos features at F octaves (the positional encoding of NeRF
and of transformers): the cross-modal attention adds them to its voxel queries.

Explained in notebooks/06_ablations.ipynb (section "What the report changes").
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from tdseg_lite.errors import UserInputError

__all__ = ["COORD_KEY", "AddCoordinates", "fourier_features", "volume_coordinates"]

#: the batch key of the coordinates (3, X, Y, Z) of a training patch
COORD_KEY = "coords"


def volume_coordinates(shape: Sequence[int], device: torch.device | str = "cpu",
                       dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Normalised coordinates of every voxel of a volume: (3, X, Y, Z) in [−1, 1] (see the module docstring).

    Args:
        shape: the spatial shape (X, Y, Z) of the whole volume.
        device, dtype: of the result.
    """
    if len(shape) != 3 or any(int(s) < 1 for s in shape):
        raise UserInputError(f"`shape` must be 3 positive sizes (X, Y, Z), got {tuple(shape)}. "
                             "Pass image.shape[-3:] of the whole volume.")
    axes = [torch.linspace(-1.0, 1.0, int(s), device=device, dtype=dtype) if s > 1
            else torch.zeros(1, device=device, dtype=dtype) for s in shape]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"))


class AddCoordinates:
    """Training-chain step: ``d["coords"] = volume_coordinates(d["image"].shape[1:])`` as a ``MetaTensor``.

    Deliberately not a MONAI ``Transform``: ``CacheDataset`` stops caching at the first such step,
    so the 3 extra channels are made afresh for each sample instead of tripling the cached RAM.
    Put it right before the random crop; list ``"coords"`` in every spatial transform after it.
    """

    def __call__(self, data: Mapping[str, Any]) -> dict[str, Any]:
        from monai.data import MetaTensor

        out = dict(data)
        image = out["image"]
        coords = volume_coordinates(image.shape[1:], device=image.device)
        out[COORD_KEY] = MetaTensor(coords, meta=dict(image.meta)) if isinstance(image, MetaTensor) else coords
        return out


def fourier_features(coords: torch.Tensor, num_frequencies: int) -> torch.Tensor:
    """[c, sin(2^f π c), cos(2^f π c)] for f = 0 … F−1: (B, 3, ...) -> (B, 3 + 6F, ...).

    Args:
        coords: (B, 3, d, h, w) normalised coordinates.
        num_frequencies: F (0 gives the coordinates alone).
    """
    if coords.ndim < 3 or coords.shape[1] != 3:
        raise UserInputError(f"`coords` must be (B, 3, ...) normalised coordinates, got {tuple(coords.shape)}. "
                             "Pass volume_coordinates(...)[None] or the batch's 'coords'.")
    parts = [coords]
    for f in range(num_frequencies):
        angle = coords * (math.pi * 2**f)
        parts += [angle.sin(), angle.cos()]
    return torch.cat(parts, dim=1)
