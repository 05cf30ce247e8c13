"""The synthetic abdominal CT phantom (``tdseg phantom``); taught in ``notebooks/00_setup_and_data.ipynb``.

The phantom is the data that lets the whole series run on a laptop without a download. Its modules,
in the order a case is made:

- ``anatomy`` -- tissues and their HU ranges, smooth random fields, perturbed ellipsoids, the canvas
- ``organs`` -- one random abdomen painted on the canvas (body wall, bowel, spine, vessels, organs)
- ``findings`` -- tumours in kidneys / pancreas, measured afterwards, and the case's description
- ``scan`` -- the "scanner": tissue map -> HU image, label sets, orientation, affine, NIfTI bytes
- ``dataset`` -- ``PhantomConfig``, ``generate_case``, the MSD-layout writer and ``tdseg phantom``
- ``labels``, ``labels_geometry``, ``labels_paint`` -- ``tdseg phantom --labels-from``: real kidney
  label maps read, measured in world coordinates and painted with the phantom's synthetic HU

This package re-exports the public names of ``dataset`` (``from tdseg_lite import phantom``, then
``phantom.generate_case(phantom.PhantomConfig(), 0)``); importing it loads NumPy, not torch or MONAI.
"""

from __future__ import annotations

from tdseg_lite.phantom.dataset import (
    HU_RANGES,
    LABEL_SETS,
    TISSUES,
    PhantomCase,
    PhantomConfig,
    add_cli_arguments,
    cli_main,
    ensure_phantom,
    generate_case,
    generate_phantom,
    hu_statistics,
)

__all__ = [
    "HU_RANGES", "LABEL_SETS", "TISSUES", "PhantomCase", "PhantomConfig", "add_cli_arguments",
    "cli_main", "ensure_phantom", "generate_case", "generate_phantom", "hu_statistics",
]
