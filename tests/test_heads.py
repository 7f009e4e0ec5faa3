"""DPT head against HF DepthAnything (tiny random config); linear segmentation probe shapes and order."""

from __future__ import annotations

import pytest
import torch

from jetvit.heads import DPTConfig, DPTHead, LinearSegConfig, LinearSegHead
from jetvit.teachers.hf_depth_anything import dpt_hf_to_official_keys, dpt_state_dict_from_hf

NECK = [8, 12, 16, 20]


@pytest.mark.parametrize("kind,max_depth", [("relative", 1), ("metric", 20)])
@pytest.mark.parametrize("size", [(70, 70), (70, 98)])
def test_dpt_head_matches_hf_depth_anything(
    hf_depth_anything, kind: str, max_depth: int, size: tuple[int, int]
) -> None:
    torch.set_num_threads(1)
    hf = hf_depth_anything(kind=kind, max_depth=max_depth)
    c = hf.config
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        ref = hf(pixel_values=x).predicted_depth  # (B, H, W)
        tokens = hf.backbone(pixel_values=x).feature_maps  # each (B, 1 + h*w, D), normed
    h, w = size[0] // c.patch_size, size[1] // c.patch_size
    features = [(t[:, 1:].transpose(1, 2).reshape(2, c.reassemble_hidden_size, h, w), t[:, :1]) for t in tokens]

    head_sd = {k: v for k, v in hf.state_dict().items() if k.startswith(("neck.", "head."))}
    cfg = DPTConfig(
        in_dim=c.reassemble_hidden_size,
        features=c.fusion_hidden_size,
        out_channels=c.neck_hidden_sizes,
        layers=[i - 1 for i in c.backbone_config.out_indices],  # HF stages are 1-based: stage k is block k-1's output
        metric=kind == "metric",
        max_depth=max_depth,
        head_hidden=c.head_hidden_size,
    )
    head = DPTHead(cfg).eval()
    head.load_state_dict(dpt_state_dict_from_hf(head_sd), strict=True)
    with torch.no_grad():
        out = head(features, size)

    assert out.shape == ref.shape == (2, *size)
    assert ref.abs().max() > 0  # the comparison would be vacuous on an all-zero ReLU output
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4 * ref.abs().max().item())


def test_key_table_names_every_official_parameter_once() -> None:
    table = dpt_hf_to_official_keys()
    head = DPTHead(DPTConfig(in_dim=32, features=16, out_channels=NECK, layers=[0, 1, 2, 3]))
    assert sorted(table.values()) == sorted(head.state_dict())
    assert len(set(table.values())) == len(table)
    assert table["neck.fusion_stage.layers.0.projection.weight"] == "scratch.refinenet4.out_conv.weight"
    assert table["head.conv3.bias"] == "scratch.output_conv2.2.bias"


def test_hf_conversion_names_bad_keys() -> None:
    sd = {k: torch.zeros(1) for k in dpt_hf_to_official_keys()}
    sd["neck.extra.weight"] = torch.zeros(1)
    del sd["head.conv1.bias"]
    with pytest.raises(ValueError, match=r"neck\.extra\.weight.*head\.conv1\.bias"):
        dpt_state_dict_from_hf(sd)


def test_dpt_clstoken_readout_uses_cls() -> None:
    torch.manual_seed(0)
    head = DPTHead(
        DPTConfig(in_dim=8, features=8, out_channels=[4, 4, 4, 4], layers=[0, 1, 2, 3], use_clstoken=True, metric=True)
    )
    head.eval()
    assert "readout_projects.0.0.weight" in head.state_dict()
    patch = torch.randn(1, 8, 2, 3)
    prefix = torch.randn(1, 5, 8)
    other = prefix.clone()
    other[:, 1:] = 0  # registers must not matter, only the CLS token
    with torch.no_grad():
        a = head([(patch, prefix)] * 4, (28, 42))
        b = head([(patch, other)] * 4, (28, 42))
        c = head([(patch, prefix + 1)] * 4, (28, 42))
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, c)


def test_dpt_config_rejects_bad_values() -> None:
    with pytest.raises(ValueError, match="out_channels"):
        DPTConfig(in_dim=8, features=8, out_channels=[4, 4], layers=[0, 1, 2, 3])
    with pytest.raises(ValueError, match="unknown DPTConfig key.*bogus"):
        DPTConfig.from_dict({"in_dim": 8, "features": 8, "out_channels": [4] * 4, "layers": [0, 1, 2, 3], "bogus": 1})
    cfg = DPTConfig(in_dim=8, features=8, out_channels=[4] * 4, layers=[0, 1, 2, 3], metric=True)
    assert DPTConfig.from_dict(cfg.to_dict()) == cfg


def test_linear_seg_head_is_dropout_bn_conv_upsample() -> None:
    torch.manual_seed(0)
    head = LinearSegHead(LinearSegConfig(in_dim=6, num_classes=3)).eval()
    with torch.no_grad():
        head.bn.running_mean.normal_()
        head.bn.running_var.uniform_(0.5, 2.0)
    x = torch.randn(2, 6, 4, 5)
    with torch.no_grad():
        out = head(x, (32, 40))
        normed = (x - head.bn.running_mean[:, None, None]) / (head.bn.running_var[:, None, None] + head.bn.eps).sqrt()
        normed = normed * head.bn.weight[:, None, None] + head.bn.bias[:, None, None]
        low = torch.einsum("bdhw,cd->bchw", normed, head.conv.weight[:, :, 0, 0]) + head.conv.bias[:, None, None]
        ref = torch.nn.functional.interpolate(low, size=(32, 40), mode="bilinear", align_corners=False)
    assert out.shape == (2, 3, 32, 40)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    # In training the dropout drops whole channels before the BatchNorm.
    assert [type(m).__name__ for m in head.children()] == ["Dropout2d", "BatchNorm2d", "Conv2d"]


@pytest.mark.parametrize("use_clstoken", [False, True])
def test_dpt_flops_match_torch_flop_counter(use_clstoken: bool) -> None:
    from torch.utils.flop_counter import FlopCounterMode

    cfg = DPTConfig(in_dim=16, features=8, out_channels=[4, 6, 8, 10], layers=[0, 1, 2, 3], use_clstoken=use_clstoken)
    head = DPTHead(cfg).eval()
    h, w = 3, 5  # odd grid: the strided level has ceil(h/2) x ceil(w/2) pixels
    feats = [(torch.randn(1, 16, h, w), torch.randn(1, 1, 16))] * 4
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        head(feats, (42, 70))
    assert head.flops(42, 70, (h, w)) == counter.get_total_flops()
