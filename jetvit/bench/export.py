"""ONNX export of a hybrid at one input resolution, checked against PyTorch with onnxruntime on CPU.

The exported graph is the backbone at a fixed H x W with its position information baked in as constants: DINOv3's
RoPE tables and DINOv2's resized learned position embedding are computed once here (exporters handle neither the
on-the-fly RoPE grid nor bicubic interpolation well), so the ONNX model contains only the blocks' arithmetic.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from jetvit.model import HybridViT, TokenLayout, resize_pos_embed


class FixedResolution(nn.Module):
    """`model` at input size `res` with RoPE tables / resized position embedding as constant buffers.

    forward: images (B, 3, H, W) -> final normed tokens (B, P + h*w, D), equal to `model(x)`.
    """

    def __init__(self, model: HybridViT, res: tuple[int, int]) -> None:
        super().__init__()
        self.model = model
        self.res = res
        grid = model.grid_size(*res)
        self.grid = grid
        with torch.no_grad():
            _, layout = model.prepare_tokens(torch.zeros(1, model.cfg.in_chans, *res, device=_device(model)))
        self.cos: Tensor | None
        self.sin: Tensor | None
        self.pos: Tensor | None
        if layout.rope is not None:
            self.register_buffer("cos", layout.rope[0].clone())  # (h*w, head_dim)
            self.register_buffer("sin", layout.rope[1].clone())
        else:
            self.cos = self.sin = None
        if model.pos_embed is not None:
            with torch.no_grad():
                self.register_buffer("pos", resize_pos_embed(model.pos_embed, grid, res, model.cfg.pos_interp).clone())
        else:
            self.pos = None

    def forward(self, x: Tensor) -> Tensor:
        m = self.model
        B = x.shape[0]
        t = m.patch_embed(x)  # (B, h*w, D)
        cls = m.cls_token.expand(B, -1, -1)
        if self.pos is not None:
            t = torch.cat((cls, t), dim=1) + self.pos  # (B, 1 + h*w, D): DINOv2's embedding covers CLS too
            cls, t = t[:, :1], t[:, 1:]
        prefix = [cls] if m.register_tokens is None else [cls, m.register_tokens.expand(B, -1, -1)]
        t = torch.cat((*prefix, t), dim=1)  # (B, P + h*w, D)
        rope = None if self.cos is None else (self.cos, self.sin)
        layout = TokenLayout(self.grid, m.num_prefix_tokens, rope)
        for blk in m.blocks:
            t = blk(t, layout)
        return m.norm(t)


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def export_onnx(model: HybridViT, res: tuple[int, int], out: str | Path, *, batch: int = 1, opset: int = 18) -> Path:
    """Write `model` at resolution `res` (fixed batch) as ONNX to `out`; returns the path."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    wrapper = FixedResolution(model.float().eval(), res).eval()
    x = torch.randn(batch, model.cfg.in_chans, *res)
    with torch.no_grad():
        program = torch.onnx.export(
            wrapper,
            (x,),
            dynamo=True,
            opset_version=opset,
            input_names=["images"],
            output_names=["tokens"],
            verbose=False,
        )
    program.save(str(out))
    return out


def check_onnx(
    model: HybridViT, path: str | Path, res: tuple[int, int], *, batch: int = 1, seed: int = 0
) -> dict[str, Any]:
    """Run the ONNX file with onnxruntime (CPU) and `model` in PyTorch on the same random images.

    Returns {"max_abs_error", "max_abs_value", "shape"}.
    """
    import numpy as np
    import onnxruntime as ort

    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, model.cfg.in_chans, *res, generator=g)
    with torch.no_grad():
        ref = model.float().eval()(x).numpy()
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})
    if got.shape != ref.shape:
        raise AssertionError(f"ONNX output shape {got.shape} != PyTorch {ref.shape}")
    return {
        "max_abs_error": float(np.abs(got - ref).max()),
        "max_abs_value": float(np.abs(ref).max()),
        "shape": list(ref.shape),
    }
