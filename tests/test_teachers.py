"""Teacher loading against Hugging Face `transformers` (tiny random models, CPU, fp32).

Each test saves a tiny HF model to disk (`save_pretrained`, which writes the Hub's 4.x tensor names), or rewrites
its weights with the transformers 5.x in-memory names, or builds an official-format checkpoint from it with the
documented key maps, loads it with `load_teacher`, and compares every block's output (and the depth map) with the
HF forward pass.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

import jetvit
from jetvit.teachers import load_teacher, teacher_config
from jetvit.teachers.hf_depth_anything import dpt_hf_to_official_keys

pytest.importorskip("transformers")

D, HEADS = 32, 2  # width and heads of the shared tiny HF models (conftest.py)


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def _hf_hidden_states(hf: torch.nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    with torch.no_grad():
        return list(hf(pixel_values=x, output_hidden_states=True).hidden_states)


def _assert_hidden_states(model: torch.nn.Module, ref: list[torch.Tensor], x: torch.Tensor) -> None:
    with torch.no_grad():
        ours = model.forward_hidden_states(x)
    assert len(ours) == len(ref)
    for i, (a, b) in enumerate(zip(ours, ref)):
        assert a.shape == b.shape, (i, a.shape, b.shape)
        err = (a - b).abs().max().item()
        assert err < 1e-5, f"hidden state {i}: max abs error {err}"


def _save_5x(hf: torch.nn.Module, directory: Path) -> Path:
    """The same model with the transformers 5.x in-memory tensor names (what `state_dict()` gives)."""
    directory.mkdir(parents=True)
    (directory / "config.json").write_text(json.dumps(hf.config.to_dict()))
    save_file({k: v.contiguous() for k, v in hf.state_dict().items()}, str(directory / "model.safetensors"))
    return directory


# ---------------------------------------------------------------------------------------------------------------
# DINOv3


def dinov3_options(*, gated: bool, bias: str) -> dict[str, object]:
    """`hf_dinov3` overrides: a SwiGLU or a GELU MLP; q/v biases (the released models), none, or q/k/v."""
    return dict(
        use_gated_mlp=gated, hidden_act="silu" if gated else "gelu", query_bias=bias != "none",
        value_bias=bias != "none", key_bias=bias == "qkv",
    )  # fmt: skip


DINOV3_CASES = [(False, "qv"), (True, "qv"), (False, "none"), (True, "qkv")]


@pytest.mark.parametrize("gated,bias", DINOV3_CASES)
def test_hf_dinov3_matches_transformers(hf_dinov3, tmp_path: Path, gated: bool, bias: str) -> None:
    hf = hf_dinov3(**dinov3_options(gated=gated, bias=bias))
    hf.save_pretrained(tmp_path / "hub")
    stored = {k for k in __import__("safetensors").safe_open(str(tmp_path / "hub/model.safetensors"), "pt").keys()}
    assert "layer.0.norm1.weight" in stored  # the Hub (4.x) naming
    model = load_teacher(tmp_path / "hub")
    assert model.arch == "FF" and model.cfg.family == "dinov3"
    assert model.cfg.mlp == ("swiglu" if gated else "gelu") and model.cfg.k_bias == (bias == "qkv")
    for size in [(80, 112), (64, 64)]:
        x = torch.randn(2, 3, *size)
        _assert_hidden_states(model, _hf_hidden_states(hf, x), x)

    model5 = load_teacher(_save_5x(hf, tmp_path / "v5"))  # `model.layer.N.` names
    for k, v in model.state_dict().items():
        assert torch.equal(v, model5.state_dict()[k]), k


def official_dinov3_state_dict(hf: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The official DINOv3 `.pth` layout of an HF DINOv3 model (the documented key map, written out here)."""
    c, sd = hf.config, hf.state_dict()
    out = {
        "cls_token": sd["embeddings.cls_token"],
        "storage_tokens": sd["embeddings.register_tokens"],
        "mask_token": sd["embeddings.mask_token"][0],  # official: (1, D)
        "patch_embed.proj.weight": sd["embeddings.patch_embeddings.weight"],
        "patch_embed.proj.bias": sd["embeddings.patch_embeddings.bias"],
        "norm.weight": sd["norm.weight"],
        "norm.bias": sd["norm.bias"],
        "local_cls_norm.weight": torch.randn(D),
        "local_cls_norm.bias": torch.randn(D),
    }
    hd = D // c.num_attention_heads
    out["rope_embed.periods"] = c.rope_theta ** (torch.arange(hd // 4, dtype=torch.float32) * 4 / hd)
    mlp = (
        {"w1": "gate_proj", "w2": "up_proj", "w3": "down_proj"}
        if c.use_gated_mlp
        else {"fc1": "up_proj", "fc2": "down_proj"}
    )
    for i in range(c.num_hidden_layers):
        s, b = f"model.layer.{i}.", f"blocks.{i}."
        a = s + "attention."
        out[b + "attn.qkv.weight"] = torch.cat([sd[f"{a}{n}_proj.weight"] for n in "qkv"])
        # The official fused bias carries a k part that bias_mask zeroes: make it non-zero so ignoring it is tested.
        out[b + "attn.qkv.bias"] = torch.cat([sd[a + "q_proj.bias"], torch.randn(D), sd[a + "v_proj.bias"]])
        out[b + "attn.qkv.bias_mask"] = torch.cat([torch.ones(D), torch.zeros(D), torch.ones(D)])
        out[b + "attn.proj.weight"], out[b + "attn.proj.bias"] = sd[a + "o_proj.weight"], sd[a + "o_proj.bias"]
        for n in ("norm1", "norm2"):
            out[f"{b}{n}.weight"], out[f"{b}{n}.bias"] = sd[f"{s}{n}.weight"], sd[f"{s}{n}.bias"]
        out[b + "ls1.gamma"], out[b + "ls2.gamma"] = sd[s + "layer_scale1.lambda1"], sd[s + "layer_scale2.lambda1"]
        for ours, theirs in mlp.items():
            out[f"{b}mlp.{ours}.weight"], out[f"{b}mlp.{ours}.bias"] = (
                sd[f"{s}mlp.{theirs}.weight"],
                sd[f"{s}mlp.{theirs}.bias"],
            )
    return out


@pytest.mark.parametrize("gated,rope_theta", [(False, 100.0), (True, 1000.0)])
def test_official_dinov3_pth_matches_transformers(hf_dinov3, tmp_path: Path, gated: bool, rope_theta: float) -> None:
    hf = hf_dinov3(**dinov3_options(gated=gated, bias="qv"), rope_theta=rope_theta)
    torch.save(official_dinov3_state_dict(hf), tmp_path / "dinov3_tiny.pth")
    model = load_teacher(tmp_path / "dinov3_tiny.pth")  # heads from rope_embed.periods
    assert (model.cfg.num_heads, model.cfg.depth, model.cfg.num_registers, model.cfg.k_bias) == (HEADS, 2, 4, False)
    assert model.cfg.rope_base == pytest.approx(rope_theta)  # read from rope_embed.periods
    assert torch.count_nonzero(model.blocks[0].attn.qkv.bias[D : 2 * D]) == 0
    x = torch.randn(1, 3, 80, 112)
    _assert_hidden_states(model, _hf_hidden_states(hf, x), x)


def test_official_dinov3_size_is_read_from_shapes(tmp_path: Path) -> None:
    from jetvit.teachers import official_dinov3

    # Shapes only: meta tensors stand in for a released ViT-L/16 without allocating it.
    dim, depth, hidden = 1024, 24, 4096
    sd = {"cls_token": torch.empty(1, 1, dim, device="meta"), "storage_tokens": torch.empty(1, 4, dim, device="meta")}
    sd["patch_embed.proj.weight"] = torch.empty(dim, 3, 16, 16, device="meta")
    for i in range(depth):
        sd[f"blocks.{i}.attn.qkv.weight"] = torch.empty(3 * dim, dim, device="meta")
        sd[f"blocks.{i}.mlp.fc1.weight"] = torch.empty(hidden, dim, device="meta")
        sd[f"blocks.{i}.attn.qkv.bias"] = torch.empty(3 * dim, device="meta")
        sd[f"blocks.{i}.ls1.gamma"] = torch.empty(dim, device="meta")
    cfg = official_dinov3.config_from_state_dict(sd)  # no periods: heads from the released-size table
    assert (cfg.dim, cfg.depth, cfg.num_heads, cfg.mlp, cfg.mlp_hidden) == (1024, 24, 16, "gelu", 4096)
    assert official_dinov3.size_name(cfg) == "vitl16"
    assert official_dinov3.config_from_state_dict(sd, size="vitl16").num_heads == 16
    with pytest.raises(ValueError, match="vitb16"):
        official_dinov3.config_from_state_dict(sd, size="vitb16")
    with pytest.raises(ValueError, match="unknown DINOv3 size"):
        official_dinov3.config_from_state_dict(sd, size="vitq")


# ---------------------------------------------------------------------------------------------------------------
# DINOv2 and DINOv2-with-registers


@pytest.mark.parametrize("registers,swiglu", [(False, False), (False, True), (True, False)])
def test_hf_dinov2_matches_transformers(hf_dinov2, tmp_path: Path, registers: bool, swiglu: bool) -> None:
    hf = hf_dinov2(registers=registers, swiglu=swiglu)
    hf.save_pretrained(tmp_path / "hub")
    model = load_teacher(tmp_path / "hub")
    assert model.cfg.family == ("dinov2_reg" if registers else "dinov2")
    assert model.cfg.pos_interp == ("hf_antialias" if registers else "hf")
    assert model.num_prefix_tokens == (5 if registers else 1)
    for size in [(70, 98), (70, 70), (84, 84)]:  # interpolated non-square, native, interpolated square
        x = torch.randn(2, 3, *size)
        _assert_hidden_states(model, _hf_hidden_states(hf, x), x)

    model5 = load_teacher(_save_5x(hf, tmp_path / "v5"))  # attention.q_proj / mlp.gate_proj names
    for k, v in model.state_dict().items():
        assert torch.equal(v, model5.state_dict()[k]), k


# ---------------------------------------------------------------------------------------------------------------
# Depth-Anything-V2


def _assert_depth(model: torch.nn.Module, hf: torch.nn.Module, x: torch.Tensor) -> None:
    with torch.no_grad():
        ref = hf(pixel_values=x).predicted_depth
        ours = model.predict_depth(x)
    assert ours.shape == ref.shape == (x.shape[0], *x.shape[2:])
    assert ref.abs().max() > 0
    err = ((ours - ref).abs().max() / ref.abs().max()).item()
    assert err < 1e-4, f"depth relative error {err}"


@pytest.mark.parametrize("kind,max_depth", [("relative", 1), ("metric", 20)])
def test_hf_depth_anything_matches_transformers(hf_depth_anything, tmp_path: Path, kind: str, max_depth: float) -> None:
    hf = hf_depth_anything(kind=kind, max_depth=max_depth)
    hf.save_pretrained(tmp_path / "hub")
    model = load_teacher(tmp_path / "hub")
    head = model.cfg.depth_head
    assert model.cfg.family == "depth_anything_v2" and model.cfg.pos_interp == "hf"
    assert head["layers"] == [0, 1, 2, 3] and head["metric"] == (kind == "metric")
    for size in [(70, 98), (70, 70)]:
        x = torch.randn(1, 3, *size)
        with torch.no_grad():
            ref = list(hf.backbone(pixel_values=x, output_hidden_states=True).hidden_states)
        _assert_hidden_states(model, ref, x)
        _assert_depth(model, hf, x)
    model5 = load_teacher(_save_5x(hf, tmp_path / "v5"))
    for k, v in model.state_dict().items():
        assert torch.equal(v, model5.state_dict()[k]), k


def official_dinov2_state_dict(sd: dict[str, torch.Tensor], cfg, *, src: str = "", dst: str = "") -> dict:
    """The official DINOv2 layout of an HF Dinov2(+registers) state dict (5.x names under `src`), keys under `dst`."""
    out = {
        dst + "cls_token": sd[src + "embeddings.cls_token"],
        dst + "pos_embed": sd[src + "embeddings.position_embeddings"],
        dst + "mask_token": sd[src + "embeddings.mask_token"],
        dst + "patch_embed.proj.weight": sd[src + "embeddings.patch_embeddings.projection.weight"],
        dst + "patch_embed.proj.bias": sd[src + "embeddings.patch_embeddings.projection.bias"],
        dst + "norm.weight": sd[src + "layernorm.weight"],
        dst + "norm.bias": sd[src + "layernorm.bias"],
    }
    if src + "embeddings.register_tokens" in sd:
        out[dst + "register_tokens"] = sd[src + "embeddings.register_tokens"]
    for i in range(cfg.num_hidden_layers):
        s, b = f"{src}encoder.layer.{i}.", f"{dst}blocks.{i}."
        for w in ("weight", "bias"):
            out[f"{b}attn.qkv.{w}"] = torch.cat([sd[f"{s}attention.{n}_proj.{w}"] for n in "qkv"])
            out[f"{b}attn.proj.{w}"] = sd[f"{s}attention.o_proj.{w}"]
            for n in ("norm1", "norm2"):
                out[f"{b}{n}.{w}"] = sd[f"{s}{n}.{w}"]
            if cfg.use_swiglu_ffn:  # giant: gate and up fused in w12, gate first
                out[f"{b}mlp.w12.{w}"] = torch.cat([sd[f"{s}mlp.gate_proj.{w}"], sd[f"{s}mlp.up_proj.{w}"]])
                out[f"{b}mlp.w3.{w}"] = sd[f"{s}mlp.down_proj.{w}"]
            else:
                out[f"{b}mlp.fc1.{w}"], out[f"{b}mlp.fc2.{w}"] = sd[f"{s}mlp.fc1.{w}"], sd[f"{s}mlp.fc2.{w}"]
        out[b + "ls1.gamma"], out[b + "ls2.gamma"] = sd[s + "layer_scale1.lambda1"], sd[s + "layer_scale2.lambda1"]
    return out


@pytest.mark.parametrize("registers", [False, True])
def test_official_dinov2_pth(hf_dinov2, tmp_path: Path, registers: bool) -> None:
    hf = hf_dinov2(registers=registers)
    torch.save(official_dinov2_state_dict(hf.state_dict(), hf.config), tmp_path / "dinov2.pth")
    model = load_teacher(tmp_path / "dinov2.pth", num_heads=HEADS)
    assert model.cfg.family == ("dinov2_reg" if registers else "dinov2")
    # The official register models resize like HF Dinov2WithRegisters (antialiased, to size): they agree anywhere.
    assert model.cfg.pos_interp == ("hf_antialias" if registers else "official")
    for size in [(70, 98)] if registers else [(70, 70)]:
        x = torch.randn(1, 3, *size)
        _assert_hidden_states(model, _hf_hidden_states(hf, x), x)


def official_dav2_state_dict(hf: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The official Depth-Anything-V2 `.pth` layout of an HF model (the documented key maps, written out here)."""
    sd = hf.state_dict()
    out = official_dinov2_state_dict(sd, hf.config.backbone_config, src="backbone.", dst="pretrained.")
    for hf_key, official in dpt_hf_to_official_keys().items():
        out[f"depth_head.{official}"] = sd[hf_key]
    return out


@pytest.mark.parametrize("kind,swiglu", [("relative", False), ("metric", True)])
def test_official_dav2_pth_matches_transformers(hf_depth_anything, tmp_path: Path, kind: str, swiglu: bool) -> None:
    hf = hf_depth_anything(kind=kind, max_depth=20 if kind == "metric" else 1, swiglu=swiglu)
    name = "depth_anything_v2_metric_hypersim_vitt.pth" if kind == "metric" else "depth_anything_v2_vitt.pth"
    torch.save(official_dav2_state_dict(hf), tmp_path / name)
    # A tiny width is no released size: say the heads and the head's blocks; metric/max_depth come from the name.
    model = load_teacher(tmp_path / name, num_heads=HEADS, head_layers=[0, 1, 2, 3])
    assert model.cfg.pos_interp == "official" and model.cfg.family == "depth_anything_v2"
    assert model.cfg.depth_head["metric"] == (kind == "metric")
    if kind == "metric":
        assert model.cfg.depth_head["max_depth"] == 20
    # The interpolations agree only where none happens: the square native size.
    x = torch.randn(1, 3, 70, 70)
    with torch.no_grad():
        ref = list(hf.backbone(pixel_values=x, output_hidden_states=True).hidden_states)
    _assert_hidden_states(model, ref, x)
    _assert_depth(model, hf, x)


def test_official_dav2_uses_official_pos_embed_interpolation(hf_depth_anything, tmp_path: Path) -> None:
    hf = hf_depth_anything()
    sd = official_dav2_state_dict(hf)
    torch.save(sd, tmp_path / "dav2.pth")
    model = load_teacher(tmp_path / "dav2.pth", num_heads=HEADS, head_layers=[0, 1, 2, 3], metric=False)
    x = torch.randn(1, 3, 70, 98)
    with torch.no_grad():
        emb = model.forward_hidden_states(x)[0]
        # The official DINOv2 recipe: bicubic on the 5x5 grid with scale factor ((h + 0.1) / 5, (w + 0.1) / 5).
        grid = sd["pretrained.pos_embed"][:, 1:].reshape(1, 5, 5, D).permute(0, 3, 1, 2)
        pos = F.interpolate(grid, scale_factor=(5.1 / 5, 7.1 / 5), mode="bicubic").permute(0, 2, 3, 1).reshape(1, 35, D)
        patches = F.conv2d(
            x, sd["pretrained.patch_embed.proj.weight"], sd["pretrained.patch_embed.proj.bias"], stride=14
        )
        expected = patches.flatten(2).transpose(1, 2) + pos
        hf_emb = hf.backbone.embeddings(x)
    torch.testing.assert_close(emb[:, 1:], expected, atol=1e-5, rtol=0)
    assert (emb[:, 1:] - hf_emb[:, 1:]).abs().max() > 1e-4  # HF interpolates differently: the mode matters here


def test_official_dav2_released_size_from_shapes() -> None:
    from jetvit.teachers import official_dinov2

    dim, depth = 1024, 24
    m = "meta"
    sd = {
        "pretrained.cls_token": torch.empty(1, 1, dim, device=m),
        "pretrained.pos_embed": torch.empty(1, 1 + 37 * 37, dim, device=m),
    }
    sd["pretrained.patch_embed.proj.weight"] = torch.empty(dim, 3, 14, 14, device=m)
    for i in range(depth):
        sd[f"pretrained.blocks.{i}.attn.qkv.weight"] = torch.empty(3 * dim, dim, device=m)
        sd[f"pretrained.blocks.{i}.attn.qkv.bias"] = torch.empty(3 * dim, device=m)
        sd[f"pretrained.blocks.{i}.mlp.fc1.weight"] = torch.empty(4 * dim, dim, device=m)
    for i, c in enumerate([256, 512, 1024, 1024]):
        sd[f"depth_head.projects.{i}.weight"] = torch.empty(c, dim, 1, 1, device=m)
    sd["depth_head.scratch.layer1_rn.weight"] = torch.empty(256, 256, 3, 3, device=m)
    sd["depth_head.scratch.output_conv2.0.weight"] = torch.empty(32, 128, 3, 3, device=m)
    cfg = official_dinov2.config_from_state_dict(sd, path="depth_anything_v2_metric_vkitti_vitl.pth")
    assert (cfg.img_size, cfg.num_heads, official_dinov2.size_name(cfg)) == (518, 16, "vitl14")
    head = cfg.depth_head
    assert head["layers"] == [4, 11, 17, 23] and head["out_channels"] == [256, 512, 1024, 1024]
    assert head["features"] == 256 and head["metric"] and head["max_depth"] == 80
    relative = official_dinov2.config_from_state_dict(sd, path="depth_anything_v2_vitl.pth")
    assert not relative.depth_head["metric"]
    with pytest.raises(ValueError, match="max_depth"):
        official_dinov2.config_from_state_dict(sd, path="x.pth", metric=True)


# ---------------------------------------------------------------------------------------------------------------
# Other sources: jetvit directories, Hub ids


def test_jetvit_dir_round_trip(hf_dinov3, tmp_path: Path) -> None:
    hf = hf_dinov3()
    hf.save_pretrained(tmp_path / "hub")
    teacher = load_teacher(tmp_path / "hub")
    student = jetvit.convert(teacher, "LW", window_size=2)
    jetvit.save(student, tmp_path / "student")
    again = load_teacher(tmp_path / "student")
    assert again.arch == "LW"
    for k, v in student.state_dict().items():
        assert torch.equal(v, again.state_dict()[k]), k


def test_hub_id_resolves_from_local_cache_offline(hf_dinov2, tmp_path: Path) -> None:
    hf = hf_dinov2()
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "cache" / "models--tiny-org--tiny-dinov2"
    hf.save_pretrained(repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    model = load_teacher("tiny-org/tiny-dinov2", cache_dir=tmp_path / "cache", local_files_only=True)
    x = torch.randn(1, 3, 70, 70)
    _assert_hidden_states(model, _hf_hidden_states(hf, x), x)
    with pytest.raises(FileNotFoundError, match="tiny-org/not-cached"):
        load_teacher("tiny-org/not-cached", cache_dir=tmp_path / "cache", local_files_only=True)


def test_teacher_config_is_the_loaded_teachers_without_its_weights(hf_dinov3, hf_dinov2, tmp_path: Path) -> None:
    """`teacher_config` goes through `load_teacher`'s dispatch: the same config for every kind of source, with the
    same options and errors; a directory's weights are not read."""
    hf = hf_dinov3()
    hf.save_pretrained(tmp_path / "hub")
    torch.save(official_dinov3_state_dict(hf), tmp_path / "dinov3.pth")
    jetvit.save(jetvit.convert(load_teacher(tmp_path / "hub"), "LW", window_size=2), tmp_path / "student")
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "cache" / "models--tiny-org--tiny-dinov2"
    hf_dinov2().save_pretrained(repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    hub = dict(cache_dir=tmp_path / "cache", local_files_only=True)
    for src, opts in [
        (tmp_path / "hub", {}),
        (tmp_path / "dinov3.pth", {"num_heads": HEADS}),
        (tmp_path / "student", {}),
        ("tiny-org/tiny-dinov2", hub),
    ]:
        assert teacher_config(src, **opts) == load_teacher(src, **opts).cfg, src
    assert teacher_config(tmp_path / "student").arch == "LW"
    loaded = load_teacher(tmp_path / "hub").cfg
    (tmp_path / "hub" / "model.safetensors").unlink()
    assert teacher_config(tmp_path / "hub") == loaded
    with pytest.raises(FileNotFoundError, match="no weights"):
        load_teacher(tmp_path / "hub")
    with pytest.raises(ValueError, match="official checkpoint files only"):
        teacher_config(tmp_path / "hub", size="vits16")
    with pytest.raises(FileNotFoundError, match="no such file"):
        teacher_config(tmp_path / "nope.pth")
    with pytest.raises(FileNotFoundError, match="tiny-org/not-cached"):
        teacher_config("tiny-org/not-cached", **hub)


# ---------------------------------------------------------------------------------------------------------------
# Bad input


def test_missing_and_unknown_sources(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no such file"):
        load_teacher(tmp_path / "nope.pth")
    with pytest.raises(FileNotFoundError, match="no such file"):
        load_teacher(str(tmp_path / "a" / "b" / "c"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="not a model directory"):
        load_teacher(tmp_path / "empty")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ValueError, match="unsupported model_type 'bert'"):
        load_teacher(tmp_path / "other")
    torch.save({"fc.weight": torch.zeros(2, 2)}, tmp_path / "unknown.pth")
    with pytest.raises(ValueError, match="unknown checkpoint format"):
        load_teacher(tmp_path / "unknown.pth")
    (tmp_path / "w.ckpt").write_bytes(b"x")
    with pytest.raises(ValueError, match="unknown weights file format"):
        load_teacher(tmp_path / "w.ckpt")


def test_truncated_checkpoints_raise(hf_dinov3, tmp_path: Path) -> None:
    hf = hf_dinov3()
    hf.save_pretrained(tmp_path / "hub")
    st = tmp_path / "hub" / "model.safetensors"
    st.write_bytes(st.read_bytes()[: st.stat().st_size // 2])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        load_teacher(tmp_path / "hub")
    pth = tmp_path / "dinov3.pth"
    torch.save(official_dinov3_state_dict(hf), pth)
    pth.write_bytes(pth.read_bytes()[:1000])
    with pytest.raises(ValueError, match="truncated"):
        load_teacher(pth)
    (tmp_path / "hub" / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="no weights"):
        load_teacher(tmp_path / "hub")


class _Payload:
    def __reduce__(self):
        return (Path.touch, (Path(_Payload.target),))


def test_untrusted_pickle_never_runs_code(tmp_path: Path) -> None:
    _Payload.target = str(tmp_path / "pwned")
    with open(tmp_path / "evil.pth", "wb") as f:
        pickle.dump({"cls_token": _Payload()}, f, protocol=2)
    with pytest.raises(ValueError, match="never runs code from a file") as e:
        load_teacher(tmp_path / "evil.pth")
    assert "weights_only=False" not in str(e.value)  # torch's advice would run the file's code
    assert not (tmp_path / "pwned").exists()


def test_unexpected_and_missing_tensors_are_named(hf_dinov3, tmp_path: Path) -> None:
    hf = hf_dinov3()
    sd = official_dinov3_state_dict(hf)
    sd["blocks.0.attn.extra"] = torch.zeros(1)
    del sd["blocks.1.ls2.gamma"]
    torch.save(sd, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match=r"blocks\.0\.attn\.extra.*blocks\.1\.ls2\.gamma"):
        load_teacher(tmp_path / "bad.pth")

    hf.save_pretrained(tmp_path / "hub")
    from safetensors.torch import load_file

    st = load_file(str(tmp_path / "hub" / "model.safetensors"))
    st.pop("layer.1.mlp.up_proj.bias")
    save_file(st, str(tmp_path / "hub" / "model.safetensors"))
    with pytest.raises(ValueError, match=r"missing tensors: \['layer\.1\.mlp\.up_proj\.bias'\]"):
        load_teacher(tmp_path / "hub")


def test_official_options_rejected_for_hf_dirs(hf_dinov3, tmp_path: Path) -> None:
    hf_dinov3().save_pretrained(tmp_path / "hub")
    with pytest.raises(ValueError, match="official checkpoint files only"):
        load_teacher(tmp_path / "hub", size="vits16")
