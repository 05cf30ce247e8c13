"""The label latent trained once per dataset: pre-trained label autoencoders cached on disk.

The label autoencoder (``label_ae.py``) sees nothing but the training labels and its own config; the
image encoder, the text and the joint phase never change it (it is frozen). So every TextDiffSeg
run on the same dataset -- ``tdseg train``, the notebooks, the benchmarks -- can share one
pre-trained autoencoder instead of training its own inside its budget::

    key  = sha256(format, LabelAEConfig (without max_steps and reuse), steps, seed,
                  every training label volume in order: shape, dtype, bytes)
    file = $TDSEG_CACHE/label_ae/<key>.pt     (default ~/.cache/tdseg_lite/label_ae/<key>.pt)

The training label volumes are the ones the AE phase trains on: the run's training split through
``val_transforms`` (RAS, the run's spacing, body crop, padding), as uint8 (X, Y, Z) class indices.
A changed label, case, split, spacing or AE setting gives another key, so a stale autoencoder is
never reused. A hit loads the weights with ``torch.load(weights_only=True)``; a miss trains
``steps`` steps and stores the result atomically (temp file + rename). A corrupt or unreadable
file is ignored with a one-line warning and retrained. ``LabelAEConfig.reuse=False``
(``tdseg train --set label_ae.reuse=false``) always trains, and refreshes the stored copy.

    res = cached_label_autoencoder(data_cfg, root, build_config(LabelAEConfig, "smoke", {"num_classes": 3}))
    res.model       # LabelAutoencoder in eval mode
    res.reused      # True when it came from the cache; res.seconds: what getting it cost

Used by notebook 03 and by ``tdseg train`` (notebooks 04, 05); the autoencoder itself is explained in
notebooks/02_label_latent_space.ipynb.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from tdseg_lite.config import config_to_dict

if TYPE_CHECKING:  # torch and the networks only when a function runs
    import torch

    from tdseg_lite.data import DataConfig
    from tdseg_lite.label_ae import LabelAEConfig, LabelAutoencoder

__all__ = ["LabelAEResult", "cache_dir", "cache_key", "cached_label_autoencoder", "cached_volumes",
           "pretrain_label_autoencoder", "training_label_volumes"]

FORMAT = 1  # bump when the key recipe or the stored layout changes
#: LabelAEConfig fields that do not change the trained weights (``max_steps`` enters as ``steps``)
_NOT_IN_KEY = ("max_steps", "reuse")


@dataclasses.dataclass(frozen=True)
class LabelAEResult:
    """A pre-trained label autoencoder and where it came from.

    Attributes:
        model: the autoencoder (eval mode), trained or loaded.
        source: ``"trained"`` (this call trained it) or ``"reused"`` (loaded from the cache).
        seconds: what getting it cost: training, or hashing + loading.
        steps: training steps behind the weights.
        path: the cache file (``None`` when it could not be written).
        key: the cache key (sha256 hex).
    """

    model: LabelAutoencoder
    source: Literal["trained", "reused"]
    seconds: float
    steps: int
    path: Path | None
    key: str

    @property
    def reused(self) -> bool:
        """True when the weights came from the cache (no training step ran)."""
        return self.source == "reused"

    def summary(self) -> dict[str, Any]:
        """JSON-ready ``{"source", "seconds", "steps", "cache_file", "key"}`` (what config.json stores)."""
        return {"source": self.source, "seconds": round(self.seconds, 3), "steps": self.steps,
                "cache_file": str(self.path) if self.path else None, "key": self.key}


def cache_dir() -> Path:
    """``$TDSEG_CACHE/label_ae`` when ``TDSEG_CACHE`` is set, else ``~/.cache/tdseg_lite/label_ae``."""
    root = os.environ.get("TDSEG_CACHE")
    base = Path(root).expanduser() if root else Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "tdseg_lite"
    return base / "label_ae"


def cache_key(volumes: Sequence[torch.Tensor], cfg: LabelAEConfig, steps: int, seed: int) -> str:
    """sha256 over the format, the AE config (minus ``max_steps``/``reuse``), ``steps``, ``seed`` and
    every label volume in order (shape, dtype and bytes); volumes are (X, Y, Z) tensors."""
    import numpy as np

    settings = {k: v for k, v in config_to_dict(cfg).items() if k not in _NOT_IN_KEY}
    h = hashlib.sha256(json.dumps({"format": FORMAT, "config": settings, "steps": int(steps), "seed": int(seed)},
                                  sort_keys=True).encode())
    for vol in volumes:
        arr = np.ascontiguousarray(vol.detach().cpu().numpy())
        h.update(f"|{arr.shape}|{arr.dtype}|".encode())
        h.update(arr.tobytes())
    return h.hexdigest()


def training_label_volumes(data_cfg: DataConfig, items: Sequence[Mapping[str, Any]],
                           dataset: Any = None) -> list[torch.Tensor]:
    """The label volumes the AE phase trains on: each case through ``val_transforms`` -> uint8 (X, Y, Z).

    Args:
        data_cfg: the run's data settings (spacing, body crop, padding).
        items: the training cases ``{"image", "label", ...}`` in split order.
        dataset: optionally the run's training ``CacheDataset`` over ``items``. Its RAM cache holds the
            same deterministic preprocessing (``data._preprocess``), so when it covers every case the
            volumes are read from there instead of loaded and resampled again (``cached_volumes``):
            on full-resolution CT that second pass costs minutes of a run's budget.
    """
    import torch

    from tdseg_lite.data import val_transforms

    tf = val_transforms(data_cfg)

    def fresh(item: Mapping[str, Any]) -> torch.Tensor:
        return tf(dict(item))["label"][0].as_tensor().to(torch.uint8)

    cached = None if dataset is None else cached_volumes(dataset, len(items))
    if cached is not None and torch.equal(cached[0], fresh(items[0])):  # the cache holds this preprocessing
        return cached
    return [fresh(item) for item in items]


def cached_volumes(dataset: Any, n: int) -> list[torch.Tensor] | None:
    """The ``n`` label volumes (X, Y, Z) uint8 held in a MONAI ``CacheDataset``'s RAM cache, or ``None``
    when it does not hold every case (``cache_rate`` < 1, another dataset type, or another layout)."""
    import torch

    cache = getattr(dataset, "_cache", None)  # MONAI keeps the deterministic prefix's results here
    if not isinstance(cache, (list, tuple)) or len(cache) != n:
        return None
    if not all(isinstance(c, Mapping) and isinstance(c.get("label"), torch.Tensor) and c["label"].ndim == 4
               for c in cache):
        return None
    return [torch.as_tensor(c["label"][0]).as_subclass(torch.Tensor).to(torch.uint8) for c in cache]


def _load(path: Path, model: LabelAutoencoder, key: str) -> bool:
    """Fill ``model`` from ``path``; False (after a one-line warning) when the file is unusable."""
    import torch

    try:
        state = torch.load(path, map_location=model.scale_factor.device, weights_only=True)
        if not isinstance(state, dict) or state.get("format") != FORMAT or state.get("key") != key:
            raise ValueError("not a label-AE cache entry for this key")
        model.load_state_dict(state["state_dict"])
    except Exception as err:  # noqa: BLE001 - any unreadable entry is retrained, never fatal
        reason = str(err).splitlines()[0][:80] if str(err) else ""
        warnings.warn(f"label AE cache: ignoring unreadable {path} ({type(err).__name__}: {reason}); retraining.",
                      stacklevel=3)
        return False
    return True


def _store(path: Path, model: LabelAutoencoder, key: str, steps: int, seed: int, seconds: float) -> Path | None:
    """Write the cache entry atomically; None (with a warning) when the folder is not writable."""
    import torch

    from tdseg_lite.utils import atomic_write_bytes, versions

    buffer = io.BytesIO()
    torch.save({"format": FORMAT, "key": key, "config": config_to_dict(model.cfg), "steps": int(steps), "seed": int(seed),
                "train_seconds": float(seconds), "versions": versions(),
                "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()}}, buffer)
    try:
        atomic_write_bytes(path, buffer.getvalue())
    except OSError as err:
        warnings.warn(f"label AE cache: could not write {path} ({err.strerror or err}); set TDSEG_CACHE to a "
                      "writable folder to reuse the autoencoder next time.", stacklevel=3)
        return None
    return path


def pretrain_label_autoencoder(model: LabelAutoencoder, volumes: Sequence[torch.Tensor], *, steps: int | None = None,
                               seed: int = 0, reuse: bool | None = None) -> LabelAEResult:
    """Fill ``model`` with pre-trained weights: from the cache when an entry matches, else by training.

    Args:
        model: a ``LabelAutoencoder`` (e.g. ``TextDiffSeg.label_ae``); changed in place, left in eval mode.
        volumes: the training label volumes (``training_label_volumes``), (X, Y, Z) class indices.
        steps: training steps (default ``model.cfg.max_steps``).
        seed: seed of the patch sampler and the latent noise.
        reuse: look in the cache first (default ``model.cfg.reuse``); False always trains.
    """
    from tdseg_lite.label_ae import train_label_autoencoder

    start = time.perf_counter()
    steps = model.cfg.max_steps if steps is None else int(steps)
    reuse = model.cfg.reuse if reuse is None else reuse
    key = cache_key(volumes, model.cfg, steps, seed)
    path = cache_dir() / f"{key}.pt"
    if reuse and path.is_file() and _load(path, model, key):
        return LabelAEResult(model.eval(), "reused", time.perf_counter() - start, steps, path, key)
    grads = [p.requires_grad for p in model.parameters()]
    model.requires_grad_(True)
    history = train_label_autoencoder(model, volumes, max_steps=steps, seed=seed)
    for p, g in zip(model.parameters(), grads):
        p.requires_grad_(g)
    stored = _store(path, model, key, steps, seed, history["train_seconds"])
    return LabelAEResult(model.eval(), "trained", time.perf_counter() - start, int(history["steps"]), stored, key)


def cached_label_autoencoder(data_cfg: DataConfig, root: str | os.PathLike[str], label_ae_cfg: LabelAEConfig,
                             steps: int | None = None, seed: int = 0, *, reuse: bool | None = None
                             ) -> LabelAEResult:
    """The pre-trained label autoencoder of a dataset, as ``tdseg train`` would get it for a new run.

    The training cases are the split ``tdseg train`` makes for a new run folder
    (``data.make_splits`` with ``data_cfg.val_fraction`` and ``split_seed``), so a notebook or a
    benchmark and ``tdseg train`` with the same settings share one cache entry.

    Args:
        data_cfg: data settings (split, spacing, padding).
        root: the dataset folder (MSD layout).
        label_ae_cfg: the autoencoder's config; ``num_classes`` must match the dataset's labels.
        steps: training steps on a miss (default ``label_ae_cfg.max_steps``).
        seed: training seed (``tdseg train`` uses ``train.seed``).
        reuse: look in the cache first (default ``label_ae_cfg.reuse``).
    """
    from tdseg_lite.config import ConfigError
    from tdseg_lite.data import load_datalist, load_labels, make_splits
    from tdseg_lite.label_ae import LabelAutoencoder

    n = len(load_labels(root))
    if label_ae_cfg.num_classes != n:
        raise ConfigError(f"`LabelAEConfig.num_classes` must equal the {n} classes of {root}/dataset.json, got "
                          f"{label_ae_cfg.num_classes}. Build it with num_classes={n}.")
    by_id = {e["case_id"]: e for e in load_datalist(root)}
    split = make_splits(list(by_id), data_cfg.val_fraction, data_cfg.split_seed)
    volumes = training_label_volumes(data_cfg, [by_id[c] for c in split["train"]])
    return pretrain_label_autoencoder(LabelAutoencoder(label_ae_cfg), volumes, steps=steps, seed=seed, reuse=reuse)
