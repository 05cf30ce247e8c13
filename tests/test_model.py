"""TextDiffSeg and the baselines behind one interface: losses fall, guidance, ensembles, seeds, errors.

A stub text encoder (deterministic random token states per prompt, D = 16) keeps the tests free
of the transformer; the real encoder is tested in test_text.py.
"""

from __future__ import annotations

import zlib

import pytest
import torch

from tdseg_lite.config import ConfigError
from tdseg_lite.errors import UserInputError
from tdseg_lite.label_ae import LabelAEConfig, LabelAutoencoder
from tdseg_lite.model import (
    AuxHeadView,
    ModelConfig,
    ModelSpec,
    TextDiffSeg,
    build_model,
)
from tdseg_lite.segmenter import TextConditioner
from tdseg_lite.text import TextEmbedding

PATCH = (16, 16, 16)
TINY = {"denoiser.channels": (8, 16, 16), "denoiser.norm_num_groups": 4, "denoiser.num_head_channels": 8,
        "image_encoder.channels": (4, 8, 8, 16), "image_encoder.latent_channels": 8, "label_ae.width": 8,
        "label_ae.latent_channels": 4, "fusion.num_heads": 1, "fusion.head_dim": 8, "fusion.norm_groups": 4,
        "unet_channels": (4, 8, 16), "unet_strides": (2, 2), "unet_res_units": 1,
        "pixel_channels": (4, 8, 8), "pixel_attention_levels": (False, False, True), "skip_width": 4,
        "diffusion.inference_steps": 3}
MODELS = ("textdiffseg", "unet", "text-unet", "pixel-diffusion")


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny tensors: one thread avoids OpenMP barrier stalls on a busy 2-core machine (10-100x)."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)



class StubTextEncoder:
    """``TextEncoder``'s interface with deterministic random token states (L = 6, D = 16)."""

    def encode(self, texts: str | list[str]) -> TextEmbedding:
        texts = [texts] if isinstance(texts, str) else list(texts)
        return TextEmbedding.cat([self._one(t) for t in texts], stack=True)

    def null_embedding(self, batch_size: int = 1) -> TextEmbedding:
        return self.encode([""]).expand(batch_size)

    @staticmethod
    def _one(text: str) -> dict[str, torch.Tensor]:
        g = torch.Generator().manual_seed(zlib.crc32(text.encode()))
        tokens, n = torch.randn(6, 16, generator=g), min(6, 2 + len(text.split()))
        mask = torch.arange(6) < n
        return {"tokens": tokens, "mask": mask, "pooled": tokens[:n].mean(0), "input_ids": torch.zeros(6, dtype=torch.long)}


def make(model: str = "textdiffseg", **overrides) -> torch.nn.Module:
    torch.manual_seed(0)
    keys = {**TINY, "model": model, **overrides}
    if keys.get("model.model", model) == "pixel-diffusion":  # its denoiser widths are the pixel_* fields
        keys = {k: v for k, v in keys.items() if k not in ("denoiser.channels", "denoiser.attention_levels")}
    spec = ModelSpec.build("smoke", keys)
    return build_model(spec, text_encoder=StubTextEncoder(), patch_size=PATCH)


def fixed_batch() -> dict:
    g = torch.Generator().manual_seed(0)
    image = torch.rand(2, 1, *PATCH, generator=g)
    label = torch.zeros(2, 1, *PATCH, dtype=torch.long)
    label[:, :, 4:12, 4:12, 4:12] = 1
    label[:, :, 6:9, 6:9, 6:9] = 2
    image = image * 0.2 + label.float() * 0.4
    return {"image": image, "label": label, "description": ["A 1 cm tumour in the left kidney.", ""]}


@pytest.mark.parametrize("name", MODELS)
def test_loss_falls_on_a_fixed_batch(name: str) -> None:
    model = make(name, **{"diffusion.text_dropout": 0.0})
    batch = fixed_batch()
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    torch.manual_seed(1)
    losses = []
    for _ in range(20):
        out = model.loss(batch)
        assert out["loss"].ndim == 0 and torch.isfinite(out["loss"])
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        losses.append(float(out["loss"].detach()))
    assert sum(losses[-4:]) / 4 < 0.8 * sum(losses[:4]) / 4, losses


def test_textdiffseg_loss_terms_and_frozen_autoencoder() -> None:
    model = make()
    out = model.loss(fixed_batch())
    assert {"loss", "mse", "seg", "aux_mse", "aux_seg"} <= set(out)
    assert not any(p.requires_grad for p in model.label_ae.parameters())
    model.train()
    assert not model.label_ae.training


@pytest.mark.parametrize("name", MODELS)
def test_predict_shapes_and_uncertainty(name: str) -> None:
    model = make(name).eval()
    image = fixed_batch()["image"]
    probs, unc = model.predict(image, "A kidney.", samples=2, steps=2, uncertainty=True,
                               generator=torch.Generator().manual_seed(0))
    assert probs.shape == (2, 3, *PATCH) and unc.shape == (2, 1, *PATCH)
    torch.testing.assert_close(probs.sum(dim=1), torch.ones(2, *PATCH))
    assert bool((unc >= 0).all())


def test_aux_blend_mixes_the_aux_head_into_the_sampled_prediction() -> None:
    import dataclasses

    model = make("textdiffseg").eval()
    image = fixed_batch()["image"]
    kw = {"samples": 1, "steps": 2, "uncertainty": True}
    sampled, _ = model.predict(image, "A kidney.", generator=torch.Generator().manual_seed(0), **kw)
    aux = model.predict_aux(image, "A kidney.")
    model.dcfg = dataclasses.replace(model.dcfg, aux_blend=0.25)
    blend, unc = model.predict(image, "A kidney.", generator=torch.Generator().manual_seed(0), **kw)
    torch.testing.assert_close(blend, 0.75 * sampled + 0.25 * aux)
    torch.testing.assert_close(unc, -(blend * blend.clamp_min(1e-12).log()).sum(1, keepdim=True))
    pixel = make("pixel-diffusion").eval()
    pixel.dcfg = dataclasses.replace(pixel.dcfg, aux_blend=0.5)
    with pytest.raises(UserInputError, match="`DiffusionConfig.aux_blend` needs a model with an aux head, got a "
                                             "PixelDiffusion"):
        pixel.predict(image, "A kidney.", samples=1, steps=1)


@pytest.mark.parametrize("name", ["textdiffseg", "pixel-diffusion"])
def test_guidance_zero_is_the_unconditional_model(name: str) -> None:
    model = make(name).eval()
    image = fixed_batch()["image"]
    null = StubTextEncoder().null_embedding(1)

    def run(text, w):
        return model.predict(image, text, steps=2, guidance=w, generator=torch.Generator().manual_seed(5))

    torch.testing.assert_close(run("A 3 cm tumour in the right kidney.", 0.0), run(null, 1.0), rtol=0, atol=0)
    cond, mixed = run("A 3 cm tumour in the right kidney.", 1.0), run("A 3 cm tumour in the right kidney.", 2.0)
    assert cond.shape == mixed.shape


def test_seeded_sampling_is_deterministic() -> None:
    model = make(**{"diffusion.eta": 1.0}).eval()
    image = fixed_batch()["image"]
    a, b = (model.predict(image, None, generator=torch.Generator().manual_seed(3)) for _ in range(2))
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_residual_refiner_starts_as_the_aux_head() -> None:
    model = make(**{"diffusion.text_dropout": 0.0}).eval()  # MONAI zero-initialises the denoiser's output layer
    image = fixed_batch()["image"]
    one_step = model.predict(image, steps=1, samples=1, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(one_step, AuxHeadView(model).predict(image))


def test_aux_head_view_and_ceiling() -> None:
    model = make().eval()
    batch = fixed_batch()
    assert AuxHeadView(model).predict(batch["image"]).shape == (2, 3, *PATCH)
    assert model.ceiling(batch["image"], batch["label"]).shape == (2, 3, *PATCH)
    with pytest.raises(ConfigError, match="aux_head"):
        make(aux_head=False).predict_aux(batch["image"])


@pytest.mark.parametrize("overrides", [{"text_fusion": False}, {"image_features": False}, {"model.model": "pixel-diffusion"},
                                       {"decoder_image_skip": False, "diffusion.start": "aux"},
                                       {"denoiser.self_condition": True, "diffusion.prediction_type": "epsilon"}])
def test_ablations_build_train_and_predict(overrides: dict) -> None:
    model = make(**overrides)
    assert torch.isfinite(model.loss(fixed_batch())["loss"])
    assert model.eval().predict(fixed_batch()["image"], steps=2).shape == (2, 3, *PATCH)


def test_text_dropout_replaces_rows_by_the_null_prompt() -> None:
    text = TextConditioner(StubTextEncoder(), ["kidney", "kidney tumor"])
    emb = text.embed(["a b c", "d e f"], 2, "cpu")
    dropped = text.drop(emb, 0.999, torch.Generator().manual_seed(0))
    torch.testing.assert_close(dropped.tokens, text.null(2, "cpu").tokens)
    assert bool((emb.tokens[~emb.mask] == 0).all())  # padding zeroed: MONAI's cross-attention has no mask


def test_spec_routes_dotted_keys_and_round_trips() -> None:
    spec = ModelSpec.build("smoke", {"diffusion.eta": 0.5, "model": "unet", "denoiser.film": False})
    assert spec.diffusion.eta == 0.5 and spec.model.model == "unet" and not spec.denoiser.film
    assert ModelSpec.from_dict(spec.to_dict()) == spec


@pytest.mark.parametrize(("overrides", "match"), [
    ({"decoder.eta": 1}, "must start with one of"),
    ({"diffusion.etaa": 1}, "did you mean 'eta'"),
    ({"model": "vnet"}, "must be one of"),
    ({"fusion.positional": 9}, "positional"),
    ({"num_classes": 1}, "num_classes"),
    ({"unet_strides": (2,)}, "unet_strides"),
    ({"skip_kernel": 2}, "skip_kernel"),
    ({"fusion.side_axis": 3}, "side_axis"),
    ({"fusion.side_prior": True}, "side_prior"),
])
def test_config_errors(overrides: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        ModelSpec.build("smoke", overrides)


def sided_batch() -> dict:
    """Two patches whose lesion lies in opposite halves of the side axis (0), each with its own report."""
    batch = fixed_batch()
    label = torch.zeros(2, 1, *PATCH, dtype=torch.long)
    label[:, :, 2:14, 4:12, 4:12] = 1
    label[0, :, 3:6, 6:9, 6:9] = 2       # half a (x < 8)
    label[1, :, 10:13, 6:9, 6:9] = 2     # half b
    return {**batch, "label": label, "image": batch["image"] * 0.2 + label.float() * 0.4,
            "description": ["A tumour in the left kidney.", "A tumour in the right kidney."]}


def test_side_map_starts_as_identity_then_reads_the_report() -> None:
    plain, sided = make(), make(**{"fusion.side_map": True})
    image = fixed_batch()["image"][:1]
    kw = {"steps": 2, "samples": 1}
    torch.testing.assert_close(  # W_m = 0: the map adds nothing before training
        sided.eval().predict(image, "left", generator=torch.Generator().manual_seed(0), **kw),
        sided.predict(image, "right", generator=torch.Generator().manual_seed(0), **kw))
    with torch.no_grad():
        torch.nn.init.normal_(sided.side_mix.weight)
        sided.side_reader.head.weight.zero_()
        outs = []
        for bias in ([4.0, -4.0], [-4.0, 4.0]):  # the reader says half a, then half b
            sided.side_reader.head.bias.copy_(torch.tensor(bias))
            outs.append(sided.predict(image, "any", generator=torch.Generator().manual_seed(0), **kw))
    assert float((outs[0] - outs[1]).abs().max()) > 1e-3
    assert not hasattr(plain, "side_mix") and plain.side_reader is None


def test_side_reader_is_taught_before_the_joint_phase_then_frozen() -> None:
    model = make(**{"fusion.side_map": True, "fusion.side_pretrain_steps": 150})
    batch = sided_batch()
    volumes = [label[0] for label in batch["label"]]
    summary = model.pretrain_side(batch["description"], volumes, seed=0)
    assert summary is not None and summary["steps"] == 150 and summary["accuracy"] == 1.0, summary
    assert not any(p.requires_grad for p in model.side_reader.parameters())
    out = model.loss(batch)
    assert "side" not in out  # frozen: no joint BCE
    out["loss"].backward()
    assert model.side_mix.weight.grad is not None and model.side_reader.head.weight.grad is None
    assert make().pretrain_side(batch["description"], volumes) is None  # no reader, nothing to teach


def test_side_reader_learns_each_report_s_half_from_the_labels() -> None:
    """``side_pretrain_steps=0``: the reader learns inside the joint loss, from each patch's halves."""
    model = make(**{"fusion.side_map": True, "fusion.side_pretrain_steps": 0, "diffusion.text_dropout": 0.0})
    batch = sided_batch()
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    torch.manual_seed(1)
    for _ in range(25):
        out = model.loss(batch)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
    assert "side" in out
    emb = model.text.embed(model.text.prompts(batch["description"]), 2, "cpu")
    p = torch.sigmoid(model.side_reader(emb.tokens, emb.mask))
    assert p[0, 0] > 0.7 and p[0, 1] < 0.3 and p[1, 0] < 0.3 and p[1, 1] > 0.7, p


def test_side_prior_suppresses_the_lesion_in_the_half_the_report_rules_out() -> None:
    image = fixed_batch()["image"][:1]
    kw = {"steps": 2, "samples": 1}
    plain = make(**{"fusion.side_map": True, "fusion.side_pretrain_steps": 20}).eval()
    gated = make(**{"fusion.side_map": True, "fusion.side_prior": True, "fusion.side_pretrain_steps": 20}).eval()
    gated.load_state_dict(plain.state_dict())
    base = plain.predict(image, "any", generator=torch.Generator().manual_seed(0), **kw)
    with torch.no_grad():
        for model in (plain, gated):
            model.side_reader.head.weight.zero_()
            model.side_reader.head.bias.copy_(torch.tensor([9.0, -9.0]))  # lesion in half a (x < 8) only
        probs = gated.predict(image, "any", generator=torch.Generator().manual_seed(0), **kw)
        aux = AuxHeadView(gated).predict(image, "any")
    assert float(probs[:, 2, 8:].max()) < 1e-3 and float(aux[:, 2, 8:].max()) < 1e-3  # half b: ruled out
    torch.testing.assert_close(probs[:, :, :8], base[:, :, :8], atol=1e-3, rtol=0)     # half a: the image decides
    torch.testing.assert_close(probs.sum(dim=1), torch.ones_like(probs[:, 0]))
    batch = sided_batch()
    with pytest.raises(ConfigError, match="pretrain_side"):  # a frozen reader that was never taught
        gated.train().loss(batch)
    gated.pretrain_side(batch["description"], [label[0] for label in batch["label"]])
    out = gated.loss(batch)
    assert torch.isfinite(out["loss"]) and "side" not in out


def test_add_prior_touches_only_the_last_class() -> None:
    from tdseg_lite.segmenter import DiffusionSegmenter

    logits, prior = torch.zeros(2, 3, 4, 4, 4), torch.full((2, 1, 4, 4, 4), -2.0)
    out = DiffusionSegmenter.add_prior(logits, prior)
    assert out[:, :2].eq(0).all() and out[:, 2].eq(-2).all()
    assert DiffusionSegmenter.add_prior(logits, None) is logits


def test_side_map_needs_text_and_coordinates() -> None:
    with pytest.raises(ConfigError, match="side_map"):
        make(**{"fusion.side_map": True, "coordinates": False})
    with pytest.raises(ConfigError, match="side_map"):
        make(**{"fusion.side_map": True, "text_fusion": False})


def test_call_errors() -> None:
    model = make().eval()
    with pytest.raises(UserInputError, match="`image`"):
        model.predict(torch.rand(1, 16, 16, 16))
    with pytest.raises(UserInputError, match="`samples`"):
        model.predict(fixed_batch()["image"], samples=0)
    with pytest.raises(UserInputError, match="`text`"):
        model.predict(fixed_batch()["image"], ["a", "b", "c"])
    spec = ModelSpec.build("smoke", TINY)
    with pytest.raises(ConfigError, match="num_classes"):
        TextDiffSeg(spec, LabelAutoencoder(LabelAEConfig(num_classes=2, width=8, latent_channels=4)), None, PATCH)
    assert ModelConfig().model == "textdiffseg"


@pytest.mark.parametrize("name", ["textdiffseg", "text-unet"])
def test_the_prompt_reaches_the_prediction(name: str) -> None:
    """A changed prompt changes the output (fusion not zero-initialised, so no training is needed)."""
    model = make(name, **{"fusion.zero_init": False, "diffusion.text_dropout": 0.0}).eval()
    image = fixed_batch()["image"][:1]
    kw = {"steps": 2, "samples": 1, "generator": torch.Generator().manual_seed(0)} if name == "textdiffseg" else {}
    left = model.predict(image, "A 3 cm tumour in the left kidney; the right kidney is normal.", **kw)
    kw = {**kw, "generator": torch.Generator().manual_seed(0)} if kw else kw
    right = model.predict(image, "A 3 cm tumour in the right kidney; the left kidney is normal.", **kw)
    assert float((left - right).abs().max()) > 1e-4


def test_text_unet_is_the_unet_at_initialisation() -> None:
    """The fusion at the bottleneck starts as the identity (W_o = 0): same weights, same output."""
    plain, text = make("unet"), make("text-unet")
    source = plain.state_dict()
    mapped = {k: source[k.replace(".bottom.", ".")] for k in text.state_dict() if k.replace(".bottom.", ".") in source}
    missing = text.load_state_dict(mapped, strict=False).missing_keys
    assert missing and all("fusion" in k or k.startswith("bottleneck.") for k in missing), missing
    image = fixed_batch()["image"]
    torch.testing.assert_close(text.eval().predict(image, "any report"), plain.eval().predict(image))


def test_coordinates_are_an_input() -> None:
    from tdseg_lite.positions import volume_coordinates

    model = make("unet").eval()
    assert model.uses_coordinates and model.net.model[0].conv.unit0.conv.in_channels == 4
    image = fixed_batch()["image"]
    whole = volume_coordinates(PATCH)[None].expand(2, -1, -1, -1, -1)
    torch.testing.assert_close(model.predict(image), model.predict(image, coords=whole))
    assert not torch.allclose(model.predict(image), model.predict(image, coords=whole.flip(2)))
    with pytest.raises(UserInputError, match="coords"):
        model.predict(image, coords=whole[:, :2])
    assert not make("unet", coordinates=False).uses_coordinates


def test_text_dropout_rate_is_honoured() -> None:
    text = TextConditioner(StubTextEncoder(), ["kidney", "kidney tumor"])
    emb = text.embed(["a b c"] * 4000, 4000, "cpu")
    dropped = text.drop(emb, 0.3, torch.Generator().manual_seed(0))
    null = text.null(1, "cpu").tokens[0]
    share = float((dropped.tokens == null).flatten(1).all(dim=1).float().mean())
    assert abs(share - 0.3) < 0.03, share


def test_training_prompts_are_paraphrased_with_the_same_facts() -> None:
    from tdseg_lite.reports import parse_report

    desc = "A 3.4 cm tumour in the lower pole of the left kidney; the right kidney is normal."
    text = TextConditioner(StubTextEncoder(), ["kidney", "kidney tumor"], paraphrase=1.0)
    torch.manual_seed(0)
    prompts = text.prompts([desc] * 50, train=True)
    assert len(set(prompts)) > 3 and all(parse_report(p) == parse_report(desc) for p in prompts)
    assert text.prompts([desc], train=False)[0].endswith(desc)


def test_cpu_preset_is_the_lean_joint_step_and_the_gpu_preset_is_not() -> None:
    cpu, full = ModelSpec.build("cpu"), ModelSpec.build("full")
    assert cpu.denoiser.channels == (8, 16, 32) and cpu.diffusion.decode_fraction == 0.25
    assert full.denoiser.channels == (64, 128, 128) and full.diffusion.decode_fraction == 0.5
    wide = ModelSpec.build("cpu", {"denoiser.channels": [16, 32, 64], "diffusion.decode_fraction": 0.5})
    assert wide.denoiser.channels == (16, 32, 64) and wide.diffusion.decode_fraction == 0.5  # overrides win
    pixel = ModelSpec.build("cpu", {"model": "pixel-diffusion"})
    assert pixel.denoiser.channels == pixel.model.pixel_channels  # the baseline keeps its own widths
