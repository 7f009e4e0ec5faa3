"""The hybrid model core: attention blocks against references, RoPE against transformers' DINOv3, conversion,
save/load, bad input. The kernels against theirs: test_fastpaths.py; the cost model: test_flops.py."""

from __future__ import annotations

import dataclasses
from functools import partial

import pytest
import torch

import jetvit
from jetvit import ops
from jetvit.model import HybridViT, LinearAttnConfig, TokenLayout, ViTConfig, rope_tables, validate_arch

# This file's tiny models: 4 heads of dim 8 and 5 prefix tokens (CLS + 4 registers), which the references below
# spell out, and 3x3-patch windows, which a 5x7 grid pads.
MODEL = dict(num_heads=4, num_registers=4, window_size=3)


@pytest.fixture
def tiny(tiny_model):
    """`tiny(arch, **overrides)`: the shared tiny model with this file's sizes and random weights everywhere."""
    return partial(tiny_model, random_weights=True, **MODEL)


@pytest.fixture
def images() -> torch.Tensor:
    return torch.randn(2, 3, 5 * 8, 7 * 8, generator=torch.Generator().manual_seed(1))  # grid 5x7


# ---------------------------------------------------------------------------------------------------------------
# Architecture strings and input validation


def test_arch_string_validation(tiny):
    assert validate_arch("lwfl", 4) == "LWFL"
    with pytest.raises(ValueError, match="3 letters but the model has 4 blocks"):
        validate_arch("LWF", 4)
    with pytest.raises(ValueError, match=r"unknown letters \['X'\]"):
        validate_arch("LWXF", 4)
    with pytest.raises(ValueError, match="unknown letters"):
        tiny("LLQQ")


def test_blocks_get_the_kind_named_by_the_arch_string(tiny):
    model = tiny("FWLW")
    assert model.arch == "FWLW"
    names = [type(b.attn).__name__ for b in model.blocks]
    assert names == ["FullAttention", "WindowAttention", "LinearAttention", "WindowAttention"]


def test_image_size_must_be_a_multiple_of_the_patch(tiny, images):
    model = tiny()
    with pytest.raises(ValueError, match="not a positive multiple of the patch size 8"):
        model(torch.randn(1, 3, 41, 56))
    with pytest.raises(ValueError, match=r"expected images of shape \(B, 3, H, W\)"):
        model(torch.randn(3, 40, 56))


def test_unknown_config_keys_are_errors(tiny_cfg):
    with pytest.raises(ValueError, match="unknown model config key"):
        ViTConfig.from_dict({**tiny_cfg(**MODEL).to_dict(), "wibble": 1})
    with pytest.raises(ValueError, match="linear.conv .sideways. is not one of none, static, dynamic"):
        LinearAttnConfig(conv="sideways")


# ---------------------------------------------------------------------------------------------------------------
# Attention kinds against their references


def test_window_covering_the_grid_equals_full_attention(tiny, images):
    full = tiny("FFFF")
    win = tiny("WWWW", window_size=7)
    win.load_state_dict(full.state_dict())
    torch.testing.assert_close(win(images), full(images), atol=1e-5, rtol=0)


def test_padding_does_not_change_real_tokens(tiny):
    """A window block on a 5x7 grid (window 3: padded to 6x9) equals the same block on the grid cut into its
    windows by hand: the padded tokens change nothing."""
    attn = tiny("WWWW", num_registers=0).blocks[0].attn
    g = torch.Generator().manual_seed(3)
    x = torch.randn(1, 1 + 35, 32, generator=g)
    layout = TokenLayout((5, 7), 1, rope_tables((5, 7), 8, 100.0, x.device))
    out = attn(x, layout)
    q, k, v = attn.project(x)
    cos, sin = layout.rope
    q, k = ops.apply_rope(q, cos, sin, 1), ops.apply_rope(k, cos, sin, 1)
    ref = ops.window_attention_naive(q, k, v, grid=(5, 7), window=3, num_prefix=1)
    ref = attn.proj(ref.transpose(1, 2).reshape(1, 36, 32))
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("conv,rope", [("none", False), ("static", False), ("dynamic", False), ("dynamic", True)])
def test_linear_block_equals_naive_reference(tiny, conv, rope):
    """The whole `L` attention (prefix softmax + linear patch attention + depthwise conv) against an O(N^2)
    implementation written with explicit matrices and a loop-based convolution."""
    attn = tiny("LLLL", linear=LinearAttnConfig(conv=conv, conv_size=3, rope=rope)).blocks[0].attn
    x = torch.randn(2, 5 + 35, 32, generator=torch.Generator().manual_seed(4))
    layout = TokenLayout((5, 7), 5, rope_tables((5, 7), 8, 100.0, x.device))
    out = attn(x, layout)

    q, k, v = attn.project(x)
    cos, sin = layout.rope

    def rotate(t):  # the textbook half-split rotation of the patch tokens
        return torch.cat((t[:, :, :5], t[:, :, 5:] * cos + ops.rotate_half(t[:, :, 5:]) * sin), dim=2)

    qr, kr = rotate(q), rotate(k)
    prefix = torch.softmax(qr[:, :, :5] @ kr.transpose(-1, -2) / 8**0.5, -1) @ v  # prefix: the teacher's attention
    if rope:
        q, k = qr, kr
    patches = ops.linear_attention_naive(torch.relu(q[:, :, 5:]), torch.relu(k), v)
    if conv != "none":
        vg = v[:, :, 5:].permute(0, 1, 3, 2).reshape(2, 32, 5, 7)
        if conv == "static":
            w = attn.conv.weight[:, 0].expand(2, -1, -1, -1)
        else:
            w = attn.conv_gen(vg.mean(dim=(2, 3))).reshape(2, 32, 3, 3)
        c = ops.depthwise_conv_per_image_naive(vg, w)
        patches = patches + c.reshape(2, 4, 8, 35).transpose(-1, -2)
    ref = attn.proj(torch.cat((prefix, patches), 2).transpose(1, 2).reshape(2, 40, 32))
    assert (out - ref).abs().max() < 1e-5


def test_zero_denominator_gives_zero_not_nan():
    q = torch.zeros(1, 1, 4, 8)  # phi(q) all zero: the ReLU killed every feature
    k, v = torch.rand(1, 1, 6, 8), torch.randn(1, 1, 6, 8)
    out = ops.linear_attention(q, k, v)
    assert torch.isfinite(out).all() and (out == 0).all()


def test_fresh_linear_block_is_plain_relu_linear_attention(tiny, images):
    """The squeeze dynamic conv starts with a zero kernel: a converted `L` block equals conv='none'."""
    teacher = tiny()
    dyn = jetvit.convert(teacher, "LLLL")
    plain = jetvit.convert(teacher, "LLLL", linear={"conv": "none"})
    torch.testing.assert_close(dyn(images), plain(images), atol=0, rtol=0)


def test_learned_pos_embed_family_runs_on_non_square_input(tiny):
    model = tiny("FWLF", family="dinov2", pos_embed="learned", img_size=48, num_registers=0, k_bias=True)
    out = model(torch.randn(1, 3, 40, 64))
    assert out.shape == (1, 1 + 5 * 8, 32)


# ---------------------------------------------------------------------------------------------------------------
# Features


def test_block_features_match_forward(tiny, images):
    model = tiny("LWFL")
    tokens = model(images)
    feats = model.block_features(images, [1, -1])
    patches, prefix = feats[1]
    assert patches.shape == (2, 32, 5, 7) and prefix.shape == (2, 5, 32)
    torch.testing.assert_close(patches.flatten(2).transpose(1, 2), tokens[:, 5:])
    torch.testing.assert_close(prefix, tokens[:, :5])
    with pytest.raises(ValueError, match="out of range"):
        model.block_features(images, [4])


# ---------------------------------------------------------------------------------------------------------------
# Conversion, save and load


def test_convert_inherits_every_teacher_tensor_and_leaves_teacher_untouched(tiny, images):
    teacher = tiny()
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    out_before = teacher(images)
    student = jetvit.convert(teacher, "LWFL")
    assert [type(b.attn).__name__ for b in student.blocks] == [
        "LinearAttention",
        "WindowAttention",
        "FullAttention",
        "LinearAttention",
    ]
    s_state = student.state_dict()
    for name, t in teacher.state_dict().items():
        assert torch.equal(s_state[name], t), name
        assert s_state[name].data_ptr() != t.data_ptr(), f"{name} shares storage with the teacher"
    with torch.no_grad():
        for p in student.parameters():
            p.add_(1.0)
    for name, t in teacher.state_dict().items():
        assert torch.equal(t, before[name]), name
    torch.testing.assert_close(teacher(images), out_before, atol=0, rtol=0)
    assert teacher.arch == "FFFF"


def test_convert_mlp_only_reinitialises_attention_projections(tiny):
    teacher = tiny()
    student = jetvit.convert(teacher, "LLLL", inherit="mlp")
    t, s = teacher.state_dict(), student.state_dict()
    for name in t:
        same = torch.equal(t[name], s[name])
        assert same != (".attn.qkv." in name or ".attn.proj." in name), name
    with pytest.raises(ValueError, match="inherit must be one of"):
        jetvit.convert(teacher, "LLLL", inherit="half")


def _fresh(teacher, student, inherit):
    """The student's tensors without a source: the L extras a non-L block lacks; the projections for "mlp"."""
    t = teacher.state_dict()
    return [
        n
        for n, v in student.state_dict().items()
        if n not in t or t[n].shape != v.shape or (inherit == "mlp" and (".attn.qkv." in n or ".attn.proj." in n))
    ]


@pytest.mark.parametrize(
    "arch, inherit, seed, dtype, changes",
    [
        ("LWFL", "all", 0, torch.float32, {}),
        ("LLLL", "mlp", 3, torch.float32, {}),
        ("LLWL", "all", 1, torch.float32, {"linear": LinearAttnConfig(conv="static")}),
        ("LFLW", "mlp", 0, torch.bfloat16, {"window_size": 2}),
    ],
)
def test_convert_initialises_the_fresh_tensors_from_the_seed_alone(tiny, arch, inherit, seed, dtype, changes):
    """The tensors without a source get the model's own initialisation, in the teacher's dtype, from `seed` alone:
    not from the teacher's weights, nor from the process's random state; another seed gives other values."""
    teacher, other = tiny(seed=0).to(dtype), tiny(seed=1).to(dtype)
    torch.manual_seed(123)
    got = jetvit.convert(teacher, arch, inherit=inherit, seed=seed, **changes)
    torch.manual_seed(456)
    again = jetvit.convert(other, arch, inherit=inherit, seed=seed, **changes).state_dict()
    reseeded = jetvit.convert(teacher, arch, inherit=inherit, seed=seed + 1, **changes).state_dict()
    fresh = _fresh(teacher, got, inherit)
    assert fresh and all(n.startswith("blocks.") for n in fresh)
    state = got.state_dict()
    for name in fresh:
        assert state[name].dtype == dtype and torch.equal(state[name], again[name]), name
    random = [n for n in fresh if n.endswith(("qkv.weight", "proj.weight", "conv_gen.0.weight"))]
    assert all(not torch.equal(state[n], reseeded[n]) for n in random)  # (a static convolution starts at zero)
    # the documented values: projections N(0, 0.02^2) with zero biases, the convolution's output layer zero
    for i, blk in enumerate(got.blocks):
        if inherit == "mlp":
            assert 0.015 < blk.attn.qkv.weight.float().std() < 0.025 and not blk.attn.qkv.bias.any()
        if blk.kind == "L" and teacher.blocks[i].kind != "L":
            zero = blk.attn.conv.weight if changes.get("linear") else blk.attn.conv_gen[2].weight
            assert not zero.any()


def test_convert_with_a_depth_head_initialises_only_the_fresh_tensors(tiny_depth_model):
    teacher = tiny_depth_model()
    got = jetvit.convert(teacher, "LWLF", inherit="mlp", seed=2).state_dict()
    want = jetvit.convert(teacher, "LWLF", inherit="mlp", seed=2).state_dict()
    t = teacher.state_dict()
    assert got.keys() == want.keys() and all(torch.equal(got[n], want[n]) for n in want)
    fresh = [n for n in got if n not in t or ".attn.qkv." in n or ".attn.proj." in n]
    assert all(torch.equal(got[n], t[n]) for n in got if n not in fresh)  # the DPT head among them
    assert all(not torch.equal(got[n], t[n]) for n in fresh if n in t and n.endswith("weight"))


def test_convert_builds_no_random_model(tiny, monkeypatch):
    """The student is built on the meta device and never initialised as a whole: only its fresh parts draw, and
    the random state of the process is the same as without the conversion."""
    teacher = tiny()
    calls = []
    monkeypatch.setattr(HybridViT, "init_weights", lambda self: calls.append(self))
    torch.manual_seed(7)
    student = jetvit.convert(teacher, "LWLL", inherit="mlp")
    after = torch.rand(3)
    torch.manual_seed(7)
    assert torch.equal(torch.rand(3), after)
    assert calls == []
    assert all(p.device.type == "cpu" for p in student.parameters())


@pytest.mark.parametrize("kind", ["depth", "yolos"])
def test_the_model_is_initialised_in_init_weights_alone(tiny_depth_model, tiny_yolos, kind):
    """`HybridViT(cfg)` is `init_weights()` on the model built on the meta device, draw for draw; that build draws
    nothing, and `init_weights()` gives every tensor (heads included) a value."""
    cfg = (tiny_depth_model() if kind == "depth" else tiny_yolos()).cfg
    cfg = dataclasses.replace(cfg, arch=("LWF" * cfg.depth)[: cfg.depth])
    torch.manual_seed(5)
    built = HybridViT(cfg)
    state = torch.random.get_rng_state()
    with torch.device("meta"):
        model = HybridViT(cfg)
    assert torch.equal(torch.random.get_rng_state(), state)
    model.to_empty(device="cpu")
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(float("nan"))
    torch.manual_seed(5)
    model.init_weights()
    want = built.state_dict()
    assert all(torch.equal(t, want[n]) for n, t in model.state_dict().items())
    assert all(torch.isfinite(p).all() for p in model.parameters())
    head = model.depth_head if kind == "depth" else model.detection_head
    assert head is not None and all(p.std() > 0 for n, p in head.named_parameters() if n.endswith("weight"))


PEAK_SCRIPT = """
import gc, json, sys, torch
import jetvit
from jetvit.bench.memory import _malloc_trim, _reset_hwm, _status_kb
from jetvit.model import HybridViT, ViTConfig
torch.set_num_threads(1)
torch.manual_seed(0)
teacher = HybridViT(ViTConfig(dim=384, depth=12, num_heads=6, mlp_hidden=1536)).to(torch.bfloat16)
small = HybridViT(ViTConfig(dim=32, depth=2, num_heads=2, mlp_hidden=64)).to(torch.bfloat16)
jetvit.convert(small, "LL", inherit="mlp")  # warm-up: the kernels' first use maps tens of MiB of code and buffers
del small
gc.collect(); _malloc_trim()
before = _status_kb("VmRSS") * 1024
assert _reset_hwm()
student = jetvit.convert(teacher, "L" * 12, inherit=sys.argv[1])
peak = _status_kb("VmHWM") * 1024 - before
size = sum(t.numel() * t.element_size() for t in student.state_dict().values())
print(json.dumps({"peak": peak, "student": size}))
"""


@pytest.mark.parametrize("inherit", ["all", "mlp"])
def test_convert_peak_memory_is_one_copy_of_the_student(inherit):
    """Measured in a fresh process: converting a bf16 teacher (12 blocks of width 384, a 56 MiB student) raises the
    resident size by the student's weights and a few MiB (the fresh tensors are drawn in place), where the full
    random initialisation in fp32 took twice the student (114 MiB)."""
    import json
    import os
    import subprocess
    import sys

    from jetvit.bench.memory import MALLOC_ENV

    if not os.path.exists("/proc/self/clear_refs"):
        pytest.skip("needs Linux's /proc/self/clear_refs to reset the peak resident size")
    env = {**os.environ, **MALLOC_ENV, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", PEAK_SCRIPT, inherit], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    m = json.loads(proc.stdout.splitlines()[-1])
    assert m["student"] < m["peak"] < 1.1 * m["student"] + 4 * 2**20, m


def test_all_f_conversion_is_the_teacher(tiny, images):
    teacher = tiny()
    torch.testing.assert_close(jetvit.convert(teacher, "FFFF")(images), teacher(images), atol=0, rtol=0)


def test_save_load_round_trip_is_bit_exact(tiny, tmp_path, images):
    model = tiny("LWFL", linear=LinearAttnConfig(conv_size=3, conv_hidden=16))
    jetvit.save(model, tmp_path / "m")
    loaded = jetvit.load(tmp_path / "m")
    assert loaded.arch == "LWFL" and loaded.cfg == model.cfg
    for (k1, v1), (k2, v2) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert k1 == k2 and torch.equal(v1, v2)
    assert torch.equal(model(images), loaded(images))


def test_load_errors_name_the_problem(tiny, tmp_path):
    with pytest.raises(FileNotFoundError, match="no such model directory"):
        jetvit.load(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="config.json is missing"):
        jetvit.load(tmp_path / "empty")
    model = tiny()
    jetvit.save(model, tmp_path / "m")
    weights = tmp_path / "m" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        jetvit.load(tmp_path / "m")
    jetvit.save(model, tmp_path / "m2")
    cfg = dataclasses.replace(model.cfg, depth=5, arch="")
    other = HybridViT(cfg)
    jetvit.save(other, tmp_path / "m3")
    (tmp_path / "m2" / "config.json").write_bytes((tmp_path / "m3" / "config.json").read_bytes())
    with pytest.raises(ValueError, match=r"missing tensors: \['blocks.4"):
        jetvit.load(tmp_path / "m2")


def test_load_in_bf16_builds_on_meta_and_keeps_outputs(tiny, tmp_path, images):
    model = tiny("LWFL")
    jetvit.save(model, tmp_path / "m")
    low = jetvit.load_teacher(tmp_path / "m", dtype=torch.bfloat16)
    assert {p.dtype for p in low.parameters()} == {torch.bfloat16}
    assert not any(p.is_meta for p in low.parameters())
    ref = model(images)
    assert (low(images.bfloat16()).float() - ref).abs().max() < 0.05 * ref.abs().max()


# ---------------------------------------------------------------------------------------------------------------
# RoPE against transformers' DINOv3


@pytest.mark.parametrize("grid,head_dim,base", [((5, 7), 8, 100.0), ((3, 2), 16, 100.0), ((4, 6), 64, 10000.0)])
def test_rope_tables_and_rotation_equal_transformers_dinov3(grid, head_dim, base):
    """`rope_tables` and `ops.apply_rope` against `transformers`' DINOv3 RoPE in eval mode (no coordinate
    augmentation): the (cos, sin) tables of non-square grids, then q and k rotated, prefix tokens left as they are.

    Tolerances 1e-6 abs on the tables, 1e-5 on unit-scale q/k: both compute the angles (up to 2*pi) in fp32, with
    the frequencies rounded differently."""
    transformers = pytest.importorskip("transformers")
    from transformers.models.dinov3_vit import modeling_dinov3_vit as hf

    cfg = transformers.DINOv3ViTConfig(hidden_size=3 * head_dim, num_attention_heads=3, patch_size=8, rope_theta=base)
    pixels = torch.zeros(1, 3, grid[0] * 8, grid[1] * 8)  # only its size is read
    cos_ref, sin_ref = hf.DINOv3ViTRopePositionEmbedding(cfg).eval()(pixels)  # each (h*w, head_dim)
    cos, sin = rope_tables(grid, head_dim, base, torch.device("cpu"))
    torch.testing.assert_close(cos, cos_ref, atol=1e-6, rtol=0)
    torch.testing.assert_close(sin, sin_ref, atol=1e-6, rtol=0)
    for prefix in (0, 5):
        g = torch.Generator().manual_seed(prefix)
        q, k = (torch.randn(2, 3, prefix + grid[0] * grid[1], head_dim, generator=g) for _ in range(2))
        q_ref, k_ref = hf.apply_rotary_pos_emb(q, k, cos_ref, sin_ref)  # (B, heads, N, head_dim)
        torch.testing.assert_close(ops.apply_rope(q, cos, sin, prefix), q_ref, atol=1e-5, rtol=0)
        torch.testing.assert_close(ops.apply_rope(k, cos, sin, prefix), k_ref, atol=1e-5, rtol=0)
