"""The conditional denoiser: shapes, zero-initialised conditioning paths, grid and config checks."""

from __future__ import annotations

import pytest
import torch

from tdseg_lite.config import ConfigError
from tdseg_lite.denoiser import ConditionalDenoiser, DenoiserConfig, attention_tokens
from tdseg_lite.errors import UserInputError

TINY = DenoiserConfig(channels=(8, 16, 16), norm_num_groups=4, num_head_channels=8)

@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny tensors: one thread avoids OpenMP barrier stalls on a busy 2-core machine (10-100x)."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)



def _randomised(den: ConditionalDenoiser) -> ConditionalDenoiser:
    """MONAI zero-initialises the output and attention projections; give them weights, keep ours at zero."""
    torch.manual_seed(1)
    for name, p in den.unet.named_parameters():
        if not name.startswith("film"):
            p.data.normal_(0.0, 0.1)
    return den.eval()


def _inputs(b: int = 2, k: int = 4, c: int = 8, g: int = 8, d: int = 16) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return {"z_t": torch.randn(b, k, g, g, g), "t": torch.tensor([10, 900][:b]), "cond": torch.randn(b, c, g, g, g),
            "tokens": torch.randn(b, 5, d), "pooled": torch.randn(b, d)}


def test_output_shape_with_every_input() -> None:
    cfg = DenoiserConfig(channels=(8, 16, 16), norm_num_groups=4, num_head_channels=8, self_condition=True)
    den = ConditionalDenoiser(4, 8, 16, cfg, feature_channels=(6, 12), grid=(8, 8, 8))
    x = _inputs()
    feats = [torch.randn(2, 6, 8, 8, 8), torch.randn(2, 12, 4, 4, 4)]
    out = den(x["z_t"], x["t"], x["cond"], x["tokens"], x["pooled"], feats, self_cond=torch.randn(2, 4, 8, 8, 8))
    assert out.shape == (2, 4, 8, 8, 8)


def test_film_and_feature_projections_start_as_identity() -> None:
    den = _randomised(ConditionalDenoiser(4, 8, 16, TINY, feature_channels=(6, 12), grid=(8, 8, 8)))
    x = _inputs()
    feats = [torch.randn(2, 6, 8, 8, 8), torch.randn(2, 12, 4, 4, 4)]
    with torch.no_grad():
        plain = den(x["z_t"], x["t"], x["cond"], x["tokens"])
        full = den(x["z_t"], x["t"], x["cond"], x["tokens"], pooled=x["pooled"], features=feats)
    assert float(plain.abs().max()) > 0
    torch.testing.assert_close(plain, full)


def test_tokens_change_the_output_through_cross_attention() -> None:
    den = _randomised(ConditionalDenoiser(4, 8, 16, TINY, grid=(8, 8, 8)))
    x = _inputs()
    with torch.no_grad():
        a = den(x["z_t"], x["t"], x["cond"], x["tokens"])
        b = den(x["z_t"], x["t"], x["cond"], x["tokens"] + 1.0)
    assert not torch.allclose(a, b)


def test_unconditional_denoiser_without_text() -> None:
    den = ConditionalDenoiser(4, 8, None, TINY, grid=(8, 8, 8))
    x = _inputs()
    assert not den.uses_tokens and den.unet.film is None
    assert den(x["z_t"], x["t"], x["cond"]).shape == (2, 4, 8, 8, 8)


def test_skip_shapes_match_the_unet() -> None:
    den = ConditionalDenoiser(4, 8, 16, TINY, grid=(8, 8, 8))
    shapes = den.unet.skip_shapes((8, 8, 8))
    assert shapes[0] == (8, (8, 8, 8)) and shapes[-1] == (16, (2, 2, 2))
    assert len(shapes) == 1 + sum(len(b.resnets) + (b.downsampler is not None) for b in den.unet.down_blocks)


def test_attention_tokens() -> None:
    assert attention_tokens((16, 16, 16), 3) == [4096, 512, 64]


def test_attention_on_too_many_tokens_is_rejected() -> None:
    cfg = DenoiserConfig(channels=(8, 16, 16), norm_num_groups=4, attention_levels=(True, True, True))
    with pytest.raises(ConfigError, match="max_attention_tokens"):
        ConditionalDenoiser(4, 8, 16, cfg, grid=(16, 16, 16))


def test_grid_must_pass_the_levels() -> None:
    with pytest.raises(ConfigError, match="divisible by 4"):
        ConditionalDenoiser(4, 8, 16, TINY, grid=(6, 8, 8))


def test_wrong_input_shapes_are_one_line_errors() -> None:
    den = ConditionalDenoiser(4, 8, 16, TINY)
    x = _inputs()
    with pytest.raises(UserInputError, match="on one grid"):
        den(x["z_t"], x["t"], torch.randn(2, 8, 4, 4, 4))


@pytest.mark.parametrize(("overrides", "match"), [
    ({"attention_levels": (False, True)}, "one entry per level"),
    ({"norm_num_groups": 5}, "must divide"),
    ({"channels": ()}, "non-empty"),
    ({"num_res_blocks": 0}, "must be >= 1"),
])
def test_config_errors(overrides: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        DenoiserConfig(**{"channels": (8, 16, 16), "norm_num_groups": 4, **overrides})
