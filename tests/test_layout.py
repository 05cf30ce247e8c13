"""The CPU memory layout (tdseg_lite.layout): channels-last where it is switched on, the same values in
both layouts, weights back to channels-first when switched off, and a clear error for a bad setting."""

from __future__ import annotations

import pytest
import torch

from tdseg_lite.baselines import UNetSegmenter
from tdseg_lite.errors import UserInputError
from tdseg_lite.image_encoder import ImageEncoder, ImageEncoderConfig
from tdseg_lite.layout import channels_last, enabled, module_channels_last
from tdseg_lite.model import ImageSkipDecoder

CL = torch.channels_last_3d


@pytest.fixture
def threads():
    """Set the thread count for one test, restore it afterwards."""
    before = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(before)


def _is_channels_last(t: torch.Tensor) -> bool:
    return t.is_contiguous(memory_format=CL) and not t.is_contiguous()


def test_channels_last_follows_the_setting_and_threads(monkeypatch, threads) -> None:
    x = torch.randn(2, 3, 4, 5, 6)
    monkeypatch.delenv("TDSEG_CHANNELS_LAST", raising=False)
    threads(1)
    assert enabled() and _is_channels_last(channels_last(x))
    assert channels_last(x, threads=2) is x            # one thread: the multi-thread-only layout stays off
    threads(2)
    assert _is_channels_last(channels_last(x, threads=2))
    assert channels_last(x[0]) is not None and channels_last(x[0]).is_contiguous()  # 4D: unchanged
    monkeypatch.setenv("TDSEG_CHANNELS_LAST", "0")
    assert not enabled() and channels_last(x) is x
    torch.testing.assert_close(channels_last(x), x)


def test_a_bad_setting_is_one_clear_line(monkeypatch) -> None:
    monkeypatch.setenv("TDSEG_CHANNELS_LAST", "yes")
    with pytest.raises(UserInputError, match=r"TDSEG_CHANNELS_LAST must be 0 or 1, got 'yes'\. .*set it to 0"):
        channels_last(torch.zeros(1, 1, 2, 2, 2))


def test_module_weights_follow_and_come_back(monkeypatch) -> None:
    conv = torch.nn.Conv3d(4, 8, 3)
    optimiser_param = conv.weight
    monkeypatch.setenv("TDSEG_CHANNELS_LAST", "1")
    x = module_channels_last(conv, torch.randn(1, 4, 6, 6, 6))
    assert _is_channels_last(x) and _is_channels_last(conv.weight)
    assert conv.weight is optimiser_param                   # moved in place: an optimiser still holds it
    monkeypatch.setenv("TDSEG_CHANNELS_LAST", "0")
    x = module_channels_last(conv, torch.randn(1, 4, 6, 6, 6))
    assert x.is_contiguous() and conv.weight.is_contiguous() and conv.weight is optimiser_param


def _outputs_and_grads(module: torch.nn.Module, run, monkeypatch, setting: str) -> list[torch.Tensor]:
    monkeypatch.setenv("TDSEG_CHANNELS_LAST", setting)
    module.zero_grad(set_to_none=True)
    outs = run()
    sum(o.float().square().mean() for o in outs).backward()
    return [o.detach().contiguous() for o in outs] + [p.grad.contiguous() for p in module.parameters()]


@pytest.mark.parametrize("n_threads", [1, 2])
def test_both_layouts_give_the_same_values_and_gradients(monkeypatch, threads, n_threads: int) -> None:
    threads(n_threads)
    torch.manual_seed(0)
    image = torch.rand(2, 1, 16, 16, 16)
    unet = UNetSegmenter(3, channels=(4, 8, 16), strides=(2, 2), num_res_units=1)
    encoder = ImageEncoder(ImageEncoderConfig(channels=(4, 8, 8, 16), latent_channels=8, aux_latent_channels=0))
    skip = ImageSkipDecoder(3, 4, width=8)
    torch.nn.init.normal_(skip.net[-1].weight)  # zero-initialised: give the refinement something to do
    logits, feat0 = torch.randn(2, 3, 16, 16, 16), torch.randn(2, 4, 16, 16, 16)
    cases = [(unet, lambda: [unet.logits(image)]),
             (encoder, lambda: [encoder.encode(image)[0], *encoder.encode(image)[1]]),
             (skip, lambda: [skip(logits, feat0)])]
    for module, run in cases:
        first = _outputs_and_grads(module, run, monkeypatch, "0")
        last = _outputs_and_grads(module, run, monkeypatch, "1")
        for a, b in zip(first, last, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    monkeypatch.setenv("TDSEG_CHANNELS_LAST", "1")
    assert _is_channels_last(next(p for p in unet.net.parameters() if p.ndim == 5 and p.shape[1] > 1))
    assert _is_channels_last(encoder.stages[1][0].conv.unit0.conv.weight)  # stage 1: 4 -> 8 channels
    latent, features = encoder.encode(image)
    assert latent.is_contiguous() and features[0].is_contiguous()  # what the latent path reads: channels-first
    assert unet.logits(image).is_contiguous()
