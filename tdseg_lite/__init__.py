"""tdseg_lite: a notebook-first, educational and real re-implementation of TextDiffSeg.

TextDiffSeg (Kangbo Ma, arXiv 2504.11825) segments 3D CT by diffusion in a label latent space,
conditioned on an image latent fused with a clinical text description by cross-modal attention.
Each stage lives in one module and is taught by one notebook in ``notebooks/`` (number in
parentheses):

- ``config``, ``utils``, ``errors`` -- frozen configs, presets, checked overrides, helpers (00)
- ``phantom*`` -- the synthetic abdominal CT dataset (00)
- ``data``, ``validate`` -- MSD-layout loading, MONAI transforms, dataset checks (00)
- ``viz`` -- slice plots, overlays, the viewer (00)
- ``prepare``, ``download`` -- KiTS19 / MSD / BTCV converters (``data_scripts/README.md``)
- ``text``, ``prompts``, ``fusion`` -- frozen text encoder + cache, 3D cross-modal attention (01)
- ``label_ae``, ``image_encoder`` -- label latent space, image feature extractor (02)

The package import is light on purpose (no torch/MONAI at import time): import the stage
module you need, e.g. ``from tdseg_lite import phantom``.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
