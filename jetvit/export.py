"""ONNX export of a hybrid at one input resolution, checked against PyTorch with onnxruntime on CPU.

The exported graph is the backbone at a fixed H x W with its position information baked in as constants: DINOv3's
RoPE tables, DINOv2's and ViT's resized learned position embedding and YOLOS's (with its mid-layer ones) are computed
once here (exporters handle neither the on-the-fly RoPE grid nor bicubic interpolation well), so the ONNX model
contains only the blocks' arithmetic.

Outputs: `tokens`, the final normed tokens in the teacher's order (`model(x)`); a model with YOLOS's detection heads
adds `logits` (B, S, num_labels + 1) and `boxes` (B, S, 4) sigmoid (cx, cy, w, h) (`model.predict_detections(x)`),
so the file is a detector on its own (postprocessing, `jetvit.tasks.detection.postprocess`, stays outside).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from jetvit.model import HybridViT, TokenLayout, resize_pos_embed


def output_names(model: HybridViT) -> list[str]:
    """The exported graph's outputs: the tokens, plus YOLOS's class logits and boxes when the model has the heads."""
    return ["tokens", "logits", "boxes"] if model.detection_head is not None else ["tokens"]


class FixedResolution(nn.Module):
    """`model` at input size `res` with RoPE tables / resized position embeddings as constant buffers.

    forward: images (B, 3, H, W) -> final normed tokens (B, G + h*w, D) in the teacher's order, equal to `model(x)`;
    with YOLOS's detection heads (tokens, class logits (B, S, C), boxes (B, S, 4)), the last two equal to
    `model.predict_detections(x)`.
    """

    def __init__(self, model: HybridViT, res: tuple[int, int]) -> None:
        super().__init__()
        self.model = model
        self.res = res
        cfg = model.cfg
        grid = model.grid_size(*res)
        self.grid = grid
        with torch.no_grad():
            _, layout = model.prepare_tokens(torch.zeros(1, cfg.in_chans, *res, device=_device(model)))
        self.cos: Tensor | None
        self.sin: Tensor | None
        self.pos: Tensor | None
        self.block_pos: Tensor | None
        if layout.rope is not None:
            self.register_buffer("cos", layout.rope[0].clone())  # (h*w, head_dim)
            self.register_buffer("sin", layout.rope[1].clone())
        else:
            self.cos = self.sin = None
        if model.pos_embed is not None:
            with torch.no_grad():
                pos = resize_pos_embed(
                    model.pos_embed,
                    grid,
                    res,
                    cfg.pos_interp,
                    stored_grid=cfg.learned_grid,
                    num_suffix=cfg.num_detection_tokens,
                )
            self.register_buffer("pos", pos.clone())  # (1, 1 + h*w + S, D): CLS, patches, detection tokens
        else:
            self.pos = None
        if layout.block_pos is not None:  # YOLOS: (L-1, 1, G + h*w, D), already in the blocks' token order
            self.register_buffer("block_pos", layout.block_pos.clone())
        else:
            self.block_pos = None

    def forward(self, x: Tensor) -> Tensor | tuple[Tensor, Tensor, Tensor]:
        m = self.model
        B, S, P = x.shape[0], m.cfg.num_detection_tokens, m.num_prefix_tokens
        t = m.patch_embed(x)  # (B, h*w, D)
        cls = m.cls_token.expand(B, -1, -1)
        det = []
        if self.pos is not None:
            pos = self.pos
            if S:  # YOLOS's detection tokens carry the last S entries
                det = [m.det_tokens.expand(B, -1, -1) + pos[:, -S:]]  # (B, S, D)
                pos = pos[:, :-S]
            t = torch.cat((cls, t), dim=1) + pos  # (B, 1 + h*w, D): the learned embedding covers CLS too
            cls, t = t[:, :1], t[:, 1:]
        prefix = [cls] if m.register_tokens is None else [cls, m.register_tokens.expand(B, -1, -1)]
        t = torch.cat((*prefix, *det, t), dim=1)  # (B, G + h*w, D): every global token in front of the patches
        rope = None if self.cos is None else (self.cos, self.sin)
        layout = TokenLayout(self.grid, m.cfg.num_global_tokens, rope, self.block_pos)
        for i, blk in enumerate(m.blocks):
            if self.block_pos is not None and i > 0:
                t = t + self.block_pos[i - 1]  # YOLOS's mid-layer embedding, before blocks 1..L-1
            t = blk(t, layout)
        t = m.norm(t)
        if not S:
            return t
        tokens = torch.cat((t[:, :P], t[:, P + S :], t[:, P : P + S]), dim=1)  # the teacher's order: detection last
        if m.detection_head is None:
            return tokens
        logits, boxes = m.detection_head(t[:, P : P + S])
        return tokens, logits, boxes


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def export_onnx(model: HybridViT, res: tuple[int, int], out: str | Path, *, batch: int = 1, opset: int = 18) -> Path:
    """Write `model` at resolution `res` (fixed batch) as ONNX to `out`; returns the path.

    The file appears whole or not at all (`jetvit.io.atomic_write_files`, with the `<name>.data` weights ONNX writes
    beside a model over 2 GB): an export killed or out of disk space leaves `out` as it was."""
    from jetvit.io import atomic_write_files, remove_stale_temporaries

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out.parent, recursive=False, name=out.name)  # of an earlier export that was killed
    wrapper = FixedResolution(model.float().eval(), res).eval()
    x = torch.randn(batch, model.cfg.in_chans, *res)
    with torch.no_grad():
        program = torch.onnx.export(
            wrapper,
            (x,),
            dynamo=True,
            opset_version=opset,
            input_names=["images"],
            output_names=output_names(model),
            verbose=False,
        )
    atomic_write_files(out, program.save)
    return out


def check_onnx(
    model: HybridViT, path: str | Path, res: tuple[int, int], *, batch: int = 1, seed: int = 0
) -> dict[str, Any]:
    """Run the ONNX file with onnxruntime (CPU) and `model` in PyTorch on the same random images: every output
    (`output_names`) against `model(x)` and, with detection heads, `model.predict_detections(x)`.

    Returns {"max_abs_error" (over all outputs), "max_abs_value", "shape" (of the tokens), "outputs": {name:
    {"max_abs_error", "shape"}}}.
    """
    import numpy as np
    import onnxruntime as ort

    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, model.cfg.in_chans, *res, generator=g)
    with torch.no_grad():
        model = model.float().eval()
        refs = [model(x)]
        if model.detection_head is not None:
            refs += list(model.predict_detections(x))
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})
    if len(got) != len(refs):
        raise AssertionError(f"the ONNX model has {len(got)} outputs, expected {output_names(model)}")
    outputs = {}
    for name, out, ref in zip(output_names(model), got, refs):
        ref = ref.numpy()
        if out.shape != ref.shape:
            raise AssertionError(f"ONNX output {name} has shape {out.shape}, PyTorch {ref.shape}")
        outputs[name] = {"max_abs_error": float(np.abs(out - ref).max()), "shape": list(ref.shape)}
    return {
        "max_abs_error": max(o["max_abs_error"] for o in outputs.values()),
        "max_abs_value": float(np.abs(refs[0].numpy()).max()),
        "shape": outputs["tokens"]["shape"],
        "outputs": outputs,
    }
