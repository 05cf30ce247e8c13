"""tdseg_lite: a notebook-first, educational and real re-implementation of TextDiffSeg.

TextDiffSeg (Kangbo Ma, arXiv 2504.11825) segments 3D CT by diffusion in a label latent space,
conditioned on an image latent fused with a clinical text description by cross-modal attention.
Each stage lives in one module and is taught by one notebook in ``notebooks/`` (number in
parentheses; "--" where a module is machinery that no notebook needs to open). The method modules
sit at the top of the package; the data that feeds them has two subpackages of its own.

The data:

- ``phantom/`` -- the synthetic abdominal CT phantom, ``tdseg phantom`` (00): ``anatomy`` (tissues,
  HU ranges, random fields, shapes), ``organs`` (one random abdomen), ``findings`` (tumours and the
  case's description), ``scan`` (HU image, label sets, orientation, affine), ``dataset``
  (``PhantomConfig``, ``generate_case``, the MSD-layout writer, the command); ``labels``,
  ``labels_geometry``, ``labels_paint`` (``tdseg phantom --labels-from``: real kidney label maps with
  synthetic HU; ``data_scripts/README.md``)
- ``datasets/`` -- real datasets, ``tdseg prepare`` (00's table of sources; ``data_scripts/README.md``):
  ``prepare`` (KiTS19 / MSD / BTCV converters), ``volumes`` (RAS, resampling, descriptions per case),
  ``download`` (checksummed downloads, safe extraction)
- ``data``, ``validate`` -- MSD-layout loading, splits, MONAI transforms; dataset checks,
  ``tdseg validate`` (00)
- ``nifti_io`` -- NIfTI reading with the header checked first, and writing (--)

The method:

- ``config``, ``utils`` -- frozen configs, presets, checked overrides; seeding, devices, atomic writes (00)
- ``viz`` -- slices in radiological orientation, overlays, curves, the viewer (00, used by all)
- ``prompts``, ``text``, ``fusion`` -- prompts, frozen text encoder + cache, 3D cross-modal attention (01)
- ``label_ae``, ``image_encoder`` -- the label latent space, the image feature extractor (02)
- ``diffusion``, ``denoiser``, ``segmenter``, ``model`` -- schedules + DDIM + guidance, the conditional
  denoiser, the ``Segmenter`` interface, TextDiffSeg and its ablations (03)
- ``baselines`` -- UNet, text-UNet and pixel-space diffusion behind the same interface (03, 05, 06)
- ``label_cache`` -- the label autoencoder trained once per dataset (03, 04)
- ``train``, ``inference`` -- the training engine; sliding windows, metrics, ``evaluate`` (03, 04, 05)
- ``train_cli``, ``train_run``, ``runs``, ``checkpoint``, ``batches``, ``distributed``, ``profiling`` --
  ``tdseg train``, a run on disk, checkpoints, a resumable data order, DDP, step timing (04)
- ``evaluate``, ``predict`` -- ``tdseg evaluate`` and ``tdseg predict`` (05)
- ``reports``, ``positions`` -- kidney reports (parser, paraphrases, conditions), voxel positions (06)

The commands:

- ``cli`` -- ``tdseg`` and its sub-commands, each in the module that owns its stage (04)
- ``checks``, ``errors`` -- argument checks shared by the commands; ``UserInputError`` (--)
- ``bench`` -- ``tdseg bench``: the scripts in ``benchmarks/`` (06)

The package import is light on purpose (no torch/MONAI at import time): import the stage
module you need, e.g. ``from tdseg_lite import phantom``.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
