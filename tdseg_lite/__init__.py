"""tdseg_lite: a notebook-first, educational and real re-implementation of TextDiffSeg.

TextDiffSeg (Kangbo Ma, arXiv 2504.11825) segments 3D CT by diffusion in a label latent space,
conditioned on an image latent fused with a clinical text description by cross-modal attention.
Each stage lives in one module and is taught by one notebook in ``notebooks/``:

=====================  ==========================================  =========================
module                 what it holds                               notebook
=====================  ==========================================  =========================
``config``             frozen configs, presets, checked overrides  00_setup_and_data
``phantom``            the synthetic abdominal CT dataset          00_setup_and_data
``data``               MSD-layout loading, transforms, validation  00_setup_and_data
``viz``                slice plots, overlays, the viewer           00_setup_and_data
``text`` ``prompts``   frozen text encoder, prompt cache           01_text_encoder
``fusion``             3D cross-modal attention                    01_text_encoder
``label_ae``           label latent space                          02_label_latent_space
``image_encoder``      image feature extractor                     02_label_latent_space
=====================  ==========================================  =========================

The package import is light on purpose (no torch/MONAI at import time): import the stage
module you need, e.g. ``from tdseg_lite import phantom``.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
