"""Real datasets into the common MSD layout (``tdseg prepare``); the recipe is ``data_scripts/README.md``.

- ``prepare`` -- ``tdseg prepare kits19 | msd | btcv``: one converter per source, resumable, ends with
  ``validate_dataset``
- ``volumes`` -- one case: reading, RAS reorientation, resampling, writing, and the per-case
  ``description`` measured from the label map
- ``download`` -- resumable, checksummed downloads and safe archive extraction

What every dataset shares, phantom and real alike, stays at the top of the package: ``validate``
(the layout checks, ``tdseg validate``), ``nifti_io`` (checked NIfTI reading) and ``data`` (loading).
Importing this package loads nothing beyond it; import the module you need, e.g.
``from tdseg_lite.datasets.volumes import convert_case``.
"""

from __future__ import annotations
