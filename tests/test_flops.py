"""The cost model `HybridViT.flops` against `torch.utils.flop_counter.FlopCounterMode` on the real forward.

What FlopCounterMode counts (2 per multiply-add, as the cost model): `mm`/`addmm`/`bmm` (the `nn.Linear` layers, the
linear attention's matmuls, SDPA's two matmuls) and convolutions (2 * output elements * kernel taps * input channels
per group, taps on the zero padding included). Biases, norms, activations, softmax, RoPE, sums and copies count
nothing: the cost model leaves out the same, so every block and the total are compared exactly. Two things need care:

- On CPU, SDPA runs `aten._scaled_dot_product_flash_attention_for_cpu`, for which FlopCounterMode has no formula
  (it counts 0). The math backend computes the same Q K^T and A V as two `bmm`s, which it counts, so the reference
  runs under `sdpa_kernel(SDPBackend.MATH)`.
- The focusing kernel (`linear.kernel="focus"`) is elementwise work that FlopCounterMode does not see, but that the
  cost model estimates on purpose; that estimate is checked against a stated bound instead.
"""

from __future__ import annotations

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from jetvit.model import LinearAttnConfig

LINEAR = [
    dict(conv="none", kernel="relu"),
    dict(conv="static", kernel="relu"),
    dict(conv="dynamic", kernel="relu"),
    dict(conv="dynamic", kernel="relu", rope=True),
    dict(conv="none", kernel="focus"),
    dict(conv="dynamic", kernel="focus"),
]


def counted(fn) -> int:
    """FLOPs FlopCounterMode counts while `fn()` runs, SDPA on its math backend (see the module docstring)."""
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), counter:
        fn()
    return counter.get_total_flops()


def is_focus(blk) -> bool:
    return blk.kind == "L" and blk.attn.kernel == "focus"


def focus_bounds(blk, grid: tuple[int, int], num_prefix: int) -> tuple[int, int]:
    """The focusing kernel phi(x) = ||relu(x)|| relu(x)^p / ||relu(x)^p||, applied to the patch queries and to all
    keys, takes about 7 operations per element (ReLU, power, two squared norms, the rescale); the cost model's
    estimate of it, for one image, must lie between 1 and 7 per element."""
    elements = (2 * grid[0] * grid[1] + num_prefix) * blk.attn.num_heads * blk.attn.head_dim
    return elements, 7 * elements


@pytest.mark.parametrize("registers", [0, 4], ids=["cls-only", "4-registers"])
@pytest.mark.parametrize("linear", LINEAR, ids=lambda d: "-".join(f"{v}" for v in d.values()))
@pytest.mark.parametrize("grid,window", [((5, 7), 3), ((6, 6), 3), ((3, 5), 8)], ids=["padded", "divided", "one"])
def test_every_block_and_the_total_equal_the_flop_counter(tiny_model, registers, linear, grid, window):
    """Per block (F, W and L with the given options, batch 2) and for the whole forward. Grid 5x7 with 3x3 windows
    pads to 6x9, 6x6 is divided exactly, and an 8x8 window covers a 3x5 grid, padded to one window."""
    model = tiny_model("FWL", window_size=window, num_registers=registers, linear=LinearAttnConfig(**linear))
    B, p = 2, model.cfg.patch_size
    images = torch.randn(B, 3, grid[0] * p, grid[1] * p, generator=torch.Generator().manual_seed(0))
    cost = model.flops(grid[0] * p, grid[1] * p, batch=B)

    with torch.no_grad():
        x, layout = model.prepare_tokens(images)
    extra_total = 0
    for i, blk in enumerate(model.blocks):
        reference = counted(lambda blk=blk, x=x: blk(x, layout))
        extra = cost["blocks"][i] - reference
        if is_focus(blk):
            low, high = focus_bounds(blk, grid, layout.num_prefix)
            assert B * low <= extra <= B * high, (cost["blocks"][i], reference)
            extra_total += extra
        else:
            assert cost["blocks"][i] == reference, blk.kind
        with torch.no_grad():
            x = blk(x, layout)

    assert cost["head"] == 0  # no depth head: the forward is the backbone
    assert cost["total"] - extra_total == counted(lambda: model(images))


@pytest.mark.parametrize("linear", LINEAR, ids=lambda d: "-".join(f"{v}" for v in d.values()))
def test_attention_flops_without_prefix_tokens(tiny_model, linear):
    """`Attention.flops` at P = 0 (no CLS either: no model has that, but each kind handles it) against the attention
    module alone on a padded grid, whose dense part is qkv and proj."""
    model = tiny_model("FWL", window_size=3, linear=LinearAttnConfig(**linear))
    grid, D = (5, 7), model.cfg.dim
    N = grid[0] * grid[1]
    with torch.no_grad():
        _, layout = model.prepare_tokens(torch.zeros(1, 3, grid[0] * 8, grid[1] * 8))
    layout = layout._replace(num_prefix=0)
    x = torch.randn(2, N, D, generator=torch.Generator().manual_seed(1))
    for blk in model.blocks:
        dense = 2 * N * D * 3 * D + 2 * N * D * D  # qkv and proj
        extra = 2 * (dense + blk.attn.flops(grid, 0)) - counted(lambda blk=blk: blk.attn(x, layout))  # batch 2
        low, high = focus_bounds(blk, grid, 0) if is_focus(blk) else (0, 0)
        assert 2 * low <= extra <= 2 * high, blk.kind


def test_flops_grow_quadratically_only_in_full_blocks(tiny_model):
    model = tiny_model("FWLF", window_size=4, num_heads=4, num_registers=4)
    small, large = model.flops(64, 64), model.flops(256, 256)  # 16x the patch tokens
    ratio = [lg / sm for lg, sm in zip(large["blocks"], small["blocks"])]
    assert ratio[0] > 40 and ratio[3] > 40  # F: dominated by N^2
    assert ratio[1] < 20 and ratio[2] < 20  # W, L: linear in N (prefix terms aside)
    assert large["total"] == sum(large["blocks"]) + large["embed"] + large["head"]
