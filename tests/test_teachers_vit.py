"""Plain ViT (HF `ViTModel`, official DINO v1) and YOLOS teachers against Hugging Face `transformers` (tiny random
models with every tensor perturbed, CPU, fp32).

The official DINO v1 format is checked by rewriting the HF model's state dict into the official key layout; at sizes
that need a resized position embedding, the HF model is given DINO v1's own interpolation (written here from the
official code: bicubic with scale factor ((h + 0.1)/M, (w + 0.1)/M)) so that both compute the official model.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

import jetvit
from jetvit.model import HybridViT
from jetvit.teachers import load_teacher

transformers = pytest.importorskip("transformers")

D, HEADS, DEPTH = 32, 2, 3


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def _perturb(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    # Random init leaves biases at zero and tokens at zero: perturb every tensor so a wrong pairing cannot hide.
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    return model.eval()


def _assert_close(ours: list[torch.Tensor], ref: list[torch.Tensor], what: str, tol: float = 1e-5) -> None:
    assert len(ours) == len(ref), (what, len(ours), len(ref))
    for i, (a, b) in enumerate(zip(ours, ref)):
        assert a.shape == b.shape, (what, i, a.shape, b.shape)
        err = (a - b).abs().max().item()
        assert err <= tol, f"{what} {i}: max abs error {err}"


def _save_5x(hf: torch.nn.Module, directory: Path) -> Path:
    """The same model with the transformers 5.x in-memory tensor names (what `state_dict()` gives)."""
    directory.mkdir(parents=True)
    (directory / "config.json").write_text(json.dumps(hf.config.to_dict()))
    save_file({k: v.contiguous() for k, v in hf.state_dict().items()}, str(directory / "model.safetensors"))
    return directory


# ---------------------------------------------------------------------------------------------------------------
# Plain ViT: HF ViTModel and official DINO v1


def hf_vit(*, eps: float = 1e-12, classifier: bool = False) -> torch.nn.Module:
    """A 3-block ViT, patch 16, 64 px native (a 4x4 position-embedding grid), MLP 64 wide."""
    cfg = transformers.ViTConfig(
        hidden_size=D, num_hidden_layers=DEPTH, num_attention_heads=HEADS, intermediate_size=64, image_size=64,
        patch_size=16, layer_norm_eps=eps, num_labels=5,
    )  # fmt: skip
    torch.manual_seed(0)
    if classifier:
        return _perturb(transformers.ViTForImageClassification(cfg))
    return _perturb(transformers.ViTModel(cfg, add_pooling_layer=False))


def _hf_vit_states(hf: torch.nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    with torch.no_grad():
        return list(hf(pixel_values=x, output_hidden_states=True, interpolate_pos_encoding=True).hidden_states)


# native, interpolated non-square, interpolated square, non-square with the stored number of patches (2x8 = 4x4)
VIT_SIZES = [(64, 64), (64, 96), (80, 80), (32, 128)]


def test_hf_vit_matches_transformers(tmp_path: Path) -> None:
    hf = hf_vit()
    hf.save_pretrained(tmp_path / "hub")
    model = load_teacher(tmp_path / "hub")
    cfg = model.cfg
    assert (cfg.family, cfg.pos_interp, cfg.layerscale, cfg.num_registers) == ("vit", "hf", False, 0)
    assert model.arch == "F" * DEPTH and model.num_prefix_tokens == 1 and cfg.k_bias
    for size in VIT_SIZES:
        x = torch.randn(2, 3, *size)
        with torch.no_grad():
            ours = model.forward_hidden_states(x)
            final = model(x)
            ref = hf(pixel_values=x, output_hidden_states=True, interpolate_pos_encoding=True)
        _assert_close(ours, list(ref.hidden_states), f"hidden state at {size}")
        _assert_close([final], [ref.last_hidden_state], f"last hidden state at {size}")

    model5 = load_teacher(_save_5x(hf, tmp_path / "v5"))  # attention.q_proj / mlp.fc1 names
    for k, v in model.state_dict().items():
        assert torch.equal(v, model5.state_dict()[k]), k


def test_hf_vit_image_classification_backbone(tmp_path: Path) -> None:
    hf = hf_vit(classifier=True)
    hf.save_pretrained(tmp_path / "hub")
    model = load_teacher(tmp_path / "hub")  # `vit.` backbone; the classifier is not part of the teacher
    x = torch.randn(1, 3, 64, 96)
    _assert_close(model.forward_hidden_states(x), _hf_vit_states(hf.vit, x), "hidden state")


def test_hf_vit_unknown_tensor_is_named(tmp_path: Path) -> None:
    hf = hf_vit()
    d = _save_5x(hf, tmp_path / "hub")
    sd = {k: v.contiguous() for k, v in hf.state_dict().items()}
    sd["encoder.layer.0.extra.weight"] = torch.zeros(2)
    save_file(sd, str(d / "model.safetensors"))
    with pytest.raises(ValueError, match="encoder.layer.0.extra.weight"):
        load_teacher(d)


def official_dino_state_dict(hf: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The official DINO v1 layout (`dino_vitbase16_pretrain.pth`) of an HF ViTModel (5.x in-memory names)."""
    sd = hf.state_dict()
    out = {
        "cls_token": sd["embeddings.cls_token"],
        "pos_embed": sd["embeddings.position_embeddings"],
        "patch_embed.proj.weight": sd["embeddings.patch_embeddings.projection.weight"],
        "patch_embed.proj.bias": sd["embeddings.patch_embeddings.projection.bias"],
        "norm.weight": sd["layernorm.weight"],
        "norm.bias": sd["layernorm.bias"],
    }
    for i in range(hf.config.num_hidden_layers):
        s, b = f"layers.{i}.", f"blocks.{i}."
        for w in ("weight", "bias"):
            out[f"{b}attn.qkv.{w}"] = torch.cat([sd[f"{s}attention.{n}_proj.{w}"] for n in "qkv"])
            out[f"{b}attn.proj.{w}"] = sd[f"{s}attention.o_proj.{w}"]
            out[f"{b}norm1.{w}"], out[f"{b}norm2.{w}"] = sd[f"{s}layernorm_before.{w}"], sd[f"{s}layernorm_after.{w}"]
            out[f"{b}mlp.fc1.{w}"], out[f"{b}mlp.fc2.{w}"] = sd[f"{s}mlp.fc1.{w}"], sd[f"{s}mlp.fc2.{w}"]
    return out


def dino_v1_interpolate_pos_encoding(embeddings: torch.nn.Module):
    """DINO v1's `VisionTransformer.interpolate_pos_encoding` (official code, `x` of shape (B, C, H, W) there), as a
    replacement for the HF method of the same name."""
    pos, patch = embeddings.position_embeddings, embeddings.patch_size

    def interpolate(tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
        npatch, N = tokens.shape[1] - 1, pos.shape[1] - 1
        if npatch == N and height == width:
            return pos
        h0, w0 = height // patch + 0.1, width // patch + 0.1
        M = math.sqrt(N)
        grid = pos[:, 1:].reshape(1, int(M), int(M), -1).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, scale_factor=(h0 / M, w0 / M), mode="bicubic")
        assert (int(h0), int(w0)) == grid.shape[-2:]
        return torch.cat((pos[:, :1], grid.permute(0, 2, 3, 1).reshape(1, -1, pos.shape[-1])), dim=1)

    return interpolate


def test_official_dino_pth_matches_transformers(tmp_path: Path) -> None:
    hf = hf_vit(eps=1e-6)  # DINO v1's LayerNorm eps
    torch.save(official_dino_state_dict(hf), tmp_path / "dino_vittiny16_pretrain.pth")
    model = load_teacher(tmp_path / "dino_vittiny16_pretrain.pth", num_heads=HEADS)
    cfg = model.cfg
    assert (cfg.family, cfg.pos_interp, cfg.layerscale, cfg.num_registers, cfg.norm_eps) == (
        "vit", "official", False, 0, 1e-6,
    )  # fmt: skip
    x = torch.randn(2, 3, 64, 64)  # native: no interpolation in either
    _assert_close(model.forward_hidden_states(x), _hf_vit_states(hf, x), "hidden state at 64x64")

    hf.save_pretrained(tmp_path / "hub")
    hf_resize = load_teacher(tmp_path / "hub")  # the same weights, resized the transformers way
    hf.embeddings.interpolate_pos_encoding = dino_v1_interpolate_pos_encoding(hf.embeddings)
    for size in VIT_SIZES[1:]:
        x = torch.randn(2, 3, *size)
        _assert_close(model.forward_hidden_states(x), _hf_vit_states(hf, x), f"hidden state at {size}")
        with torch.no_grad():
            assert (model(x) - hf_resize(x)).abs().max() > 1e-4  # the two resizes differ: the check is not vacuous


def test_official_dino_size_from_shapes(tmp_path: Path) -> None:
    from jetvit.teachers import official_dino

    sd = official_dino_state_dict(hf_vit(eps=1e-6))
    with pytest.raises(ValueError, match="num_heads"):  # a width no released DINO v1 has
        official_dino.config_from_state_dict(sd)
    with pytest.raises(ValueError, match="size 'vitb16' is dim 768"):
        official_dino.config_from_state_dict(sd, size="vitb16")
    sd["blocks.0.ls1.gamma"] = torch.ones(D)  # LayerScale: DINOv2's layout, not DINO v1's
    assert not official_dino.is_official_dino(sd)


# ---------------------------------------------------------------------------------------------------------------
# YOLOS


def hf_yolos(*, mid: bool = True, detector: bool = True) -> torch.nn.Module:
    """A 3-block YOLOS, patch 16, 64x96 native (a 4x6 position-embedding grid), 5 detection tokens, 7 classes."""
    cfg = transformers.YolosConfig(
        hidden_size=D, num_hidden_layers=DEPTH, num_attention_heads=HEADS, intermediate_size=64, image_size=[64, 96],
        patch_size=16, num_detection_tokens=5, use_mid_position_embeddings=mid, num_labels=7,
    )  # fmt: skip
    torch.manual_seed(0)
    if detector:
        return _perturb(transformers.YolosForObjectDetection(cfg))
    return _perturb(transformers.YolosModel(cfg, add_pooling_layer=False))


# native, larger, transposed (grids 4x6, 5x7, 6x4)
YOLOS_SIZES = [(64, 96), (80, 112), (96, 64)]


@pytest.mark.parametrize("mid", [True, False])
def test_hf_yolos_matches_transformers(tmp_path: Path, mid: bool) -> None:
    hf = hf_yolos(mid=mid)
    hf.save_pretrained(tmp_path / "hub")
    model = load_teacher(tmp_path / "hub")
    cfg = model.cfg
    assert (cfg.family, cfg.pos_interp, cfg.pos_grid, cfg.num_detection_tokens) == ("yolos", "yolos", (4, 6), 5)
    assert cfg.block_pos_embed == mid and cfg.detection_head == {"num_labels": 7, "num_layers": 3}
    assert model.num_prefix_tokens == 1 and cfg.num_global_tokens == 6
    for size in YOLOS_SIZES:
        x = torch.randn(2, 3, *size)
        with torch.no_grad():
            ref = hf(pixel_values=x, output_hidden_states=True)
            logits, boxes = model.predict_detections(x)
            states = model.forward_hidden_states(x)
            final = model(x)
        assert logits.shape == (2, 5, 8) and boxes.shape == (2, 5, 4)
        _assert_close([logits, boxes], [ref.logits, ref.pred_boxes], f"logits, boxes at {size}")
        # the embeddings and every block's output, tokens in the teacher's order [CLS, patches, detection tokens]
        _assert_close(states, list(ref.hidden_states), f"hidden state at {size}")
        _assert_close([final], [ref.last_hidden_state], f"last hidden state at {size}")

    model5 = load_teacher(_save_5x(hf, tmp_path / "v5"))  # encoder.interpolation.mid_position_embeddings
    for k, v in model.state_dict().items():
        assert torch.equal(v, model5.state_dict()[k]), k


def test_hf_yolos_model_without_heads(tmp_path: Path) -> None:
    hf = hf_yolos(detector=False)
    hf.save_pretrained(tmp_path / "hub")
    model = load_teacher(tmp_path / "hub")
    assert model.cfg.detection_head is None and model.detection_head is None
    x = torch.randn(1, 3, 80, 112)
    with torch.no_grad():
        ref = hf(pixel_values=x).last_hidden_state
        _assert_close([model(x)], [ref], "last hidden state")
    with pytest.raises(ValueError, match="no detection head"):
        model.predict_detections(x)


def test_yolos_saved_round_trip(tmp_path: Path) -> None:
    hf = hf_yolos()
    hf.save_pretrained(tmp_path / "hub")
    model = load_teacher(tmp_path / "hub")
    jetvit.save(model, tmp_path / "saved")
    again = load_teacher(tmp_path / "saved")
    x = torch.randn(1, 3, 80, 112)
    with torch.no_grad():
        _assert_close(list(again.predict_detections(x)), list(model.predict_detections(x)), "detections", 0)


def test_yolos_label_names_are_kept(tmp_path: Path) -> None:
    """`id2label` names (the COCO checkpoints': index == COCO category id, unused ids "N/A") become the head's
    `labels`, survive `jetvit.save`, and map a dataset's categories by name; transformers' placeholders do not."""
    from jetvit.tasks.detection import label_to_category

    names = ["N/A", "person", "bicycle", "N/A", "car"]
    cfg = transformers.YolosConfig(
        hidden_size=D, num_hidden_layers=1, num_attention_heads=HEADS, intermediate_size=64, image_size=[32, 48],
        patch_size=16, num_detection_tokens=2, id2label=dict(enumerate(names)),
    )  # fmt: skip
    transformers.YolosForObjectDetection(cfg).save_pretrained(tmp_path / "hub")
    model = load_teacher(tmp_path / "hub")
    assert model.cfg.detection_head == {"num_labels": 5, "num_layers": 3, "labels": names}
    again = load_teacher(jetvit.save(model, tmp_path / "saved"))
    assert again.detection_head.cfg.labels == names
    categories = {1: "person", 3: "car", 2: "bicycle"}  # COCO's ids and names
    assert label_to_category(again.detection_head, categories) == ({1: 1, 4: 3, 2: 2}, "names")
    placeholders = load_teacher(_save_5x(hf_yolos(), tmp_path / "default"))  # id2label LABEL_0 .. LABEL_6
    assert "labels" not in placeholders.cfg.detection_head


def _yolos_teacher(tmp_path: Path) -> HybridViT:
    hf_yolos().save_pretrained(tmp_path / "hub")
    return load_teacher(tmp_path / "hub")


def _with_arch(teacher: HybridViT, arch: str, **options) -> HybridViT:
    model = jetvit.convert(teacher, arch, **options).eval()
    assert model.arch == arch
    for name in ("det_tokens", "pos_embed", "block_pos_embed", "detection_head.box_head.layers.2.weight"):
        assert torch.equal(model.state_dict()[name], teacher.state_dict()[name]), name  # inherited
    return model


def test_yolos_window_covering_grid_equals_full(tmp_path: Path) -> None:
    teacher = _yolos_teacher(tmp_path)
    windowed = _with_arch(teacher, "W" * DEPTH, window_size=8)  # one window covers the 5x7 grid
    x = torch.randn(2, 3, 80, 112)
    with torch.no_grad():
        _assert_close([windowed(x)], [teacher(x)], "W covering the grid vs F")
        _assert_close(list(windowed.predict_detections(x)), list(teacher.predict_detections(x)), "detections")
        (patches, glob), (tp, tg) = windowed.block_features(x, [1])[0], teacher.block_features(x, [1])[0]
        _assert_close([patches, glob], [tp, tg], "intermediates")
    # small windows differ: the check above is not vacuous
    small = _with_arch(teacher, "W" * DEPTH, window_size=2)
    with torch.no_grad():
        assert (small(x) - teacher(x)).abs().max() > 1e-3


def test_yolos_detection_tokens_are_global_in_every_kind(tmp_path: Path) -> None:
    """In W and L blocks the detection tokens attend to every token with exact softmax, as CLS does; and the
    intermediates put them with CLS, in the teacher's order."""
    teacher = _yolos_teacher(tmp_path)
    x = torch.randn(2, 3, 80, 112)
    with torch.no_grad():
        tokens, layout = teacher.prepare_tokens(x)
        assert layout.num_prefix == 6  # CLS + 5 detection tokens, in front of the patches inside the blocks
        y = teacher.blocks[0].norm1(tokens)
        full = teacher.blocks[0].attn(y, layout)
        for arch, extra in (("L", {}), ("W", {"window_size": 2})):
            other = _with_arch(teacher, arch * DEPTH, **extra)
            out = other.blocks[0].attn(y, layout)
            _assert_close([out[:, :6]], [full[:, :6]], f"{arch}: global tokens' attention")
            assert (out[:, 6:] - full[:, 6:]).abs().max() > 1e-4  # the patches' attention is the approximation

        final = teacher(x)  # [CLS, 5x7 patches, 5 detection tokens]
        patches, glob = teacher.block_features(x, [-1])[0]
    assert final.shape == (2, 1 + 35 + 5, D) and glob.shape == (2, 6, D) and patches.shape == (2, D, 5, 7)
    _assert_close([glob, patches.flatten(2).transpose(1, 2)], [final[:, [0, 36, 37, 38, 39, 40]], final[:, 1:36]], "")


def test_yolos_flops_count_detection_tokens(tmp_path: Path) -> None:
    teacher = _yolos_teacher(tmp_path)
    plain = HybridViT(dataclasses.replace(teacher.cfg, num_detection_tokens=0, detection_head=None))
    ours, without = teacher.flops(80, 112), plain.flops(80, 112)
    assert ours["blocks"][0] > without["blocks"][0] and ours["head"] > 0 == without["head"]


# ---------------------------------------------------------------------------------------------------------------
# Presets and saved files


def test_presets_have_the_released_shapes() -> None:
    """`dino-b` and `yolos-b` have the parameters of transformers' ViT-B/16 and YOLOS-Base (all built on meta)."""
    from jetvit.bench.presets import preset_config
    from jetvit.teachers import released

    def count(m: torch.nn.Module) -> int:
        return sum(p.numel() for p in m.parameters())

    with torch.device("meta"):
        dino = HybridViT(preset_config("dino-b"))
        yolos = HybridViT(preset_config("yolos-b"))
        hf_dino = transformers.ViTModel(transformers.ViTConfig(), add_pooling_layer=False)
        yolos_cfg = transformers.YolosConfig(image_size=list(released.YOLOS_BASE_IMAGE), num_labels=91)
        hf_yolos_b = transformers.YolosForObjectDetection(yolos_cfg)
    assert count(dino) == count(hf_dino)
    assert count(yolos) == count(hf_yolos_b)
    assert yolos.cfg.pos_grid == (50, 84) and yolos.cfg.num_global_tokens == 101
    assert yolos.det_tokens.shape == (1, 100, 768) and yolos.block_pos_embed.shape == (11, 1, 1 + 50 * 84 + 100, 768)


def test_format_1_files_read_without_the_detection_keys(tmp_path: Path) -> None:
    """Files saved before YOLOS support (format 1) lack the detection keys and read as models without them."""
    model = HybridViT(dataclasses.replace(hf_vit_teacher_cfg(), arch="FWL")).eval()
    jetvit.save(model, tmp_path / "m")
    meta = json.loads((tmp_path / "m/config.json").read_text())
    assert meta["format_version"] == 2
    meta["format_version"] = 1
    for key in ("pos_grid", "num_detection_tokens", "block_pos_embed", "detection_head"):
        del meta["config"][key]
    (tmp_path / "m/config.json").write_text(json.dumps(meta))
    again = load_teacher(tmp_path / "m")
    assert again.cfg == model.cfg and again.arch == "FWL"
    meta["format_version"] = 2  # a format-2 file must have every key
    (tmp_path / "m/config.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="num_detection_tokens"):
        load_teacher(tmp_path / "m")


def hf_vit_teacher_cfg():
    from jetvit.teachers.hf_vit import config_from_hf

    return config_from_hf(hf_vit().config.to_dict())
