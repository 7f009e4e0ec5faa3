"""Heads that the teachers ship or that the evaluations train on frozen features.

- `DPTHead`: the Depth-Anything-V2 DPT depth head. Its parameter names are the official DAv2 ones
  (`projects.i`, `resize_layers.i`, `scratch.layerK_rn`, `scratch.refinenetK...`, `scratch.output_conv*`), so an
  official checkpoint's `depth_head.*` tensors load by identity (Hugging Face's names: the table in
  `jetvit.teachers.hf_depth_anything`).
- `DetectionHead`: YOLOS's class and box heads on the detection tokens (the object-detection teachers carry it).
- `LinearSegHead`: DINOv3's linear segmentation probe on the normed last-block patch features.
- `LinearClsHead`: DINO's linear classification probe on the normed CLS token(s), optionally with the mean patch token.

Feature notation in this file: B batch, D backbone width, (h, w) patch grid, P prefix tokens (CLS + registers),
C channels of a DPT level, F the DPT fusion width, (H, W) output image size, S detection tokens.

The heads a model carries (`DPTHead`, `DetectionHead`) are built by `jetvit.model.HybridViT`; this file does not import
the model.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from jetvit._config import from_dict

# Each intermediate feature: the patch map (B, D, h, w) and the prefix tokens (B, P, D), both after the final norm.
Features = list[tuple[Tensor, Tensor]]


# --------------------------------------------------------------------------------------------------------------------
# DPT depth head (Depth-Anything-V2)
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class DPTConfig:
    """Shape of a DAv2 DPT head.

    in_dim: backbone width D. features: fusion width F (vits 64, vitb 128, vitl 256, vitg 384).
    out_channels: the four reassemble widths (vits [48, 96, 192, 384] ...). layers: the four 0-based backbone blocks
    whose normed outputs the head reads (vits/vitb [2, 5, 8, 11], vitl [4, 11, 17, 23]).
    use_clstoken: concatenate the CLS token to every patch token and project back (no released DAv2 model does).
    metric: end in sigmoid * max_depth (metric depth in metres) instead of ReLU (relative, disparity-like values).
    """

    in_dim: int
    features: int
    out_channels: list[int]
    layers: list[int]
    use_clstoken: bool = False
    metric: bool = False
    max_depth: float = 20.0
    head_hidden: int = 32  # width of the last 3x3 conv; 32 in every released DAv2 model

    def __post_init__(self) -> None:
        if len(self.out_channels) != 4:
            raise ValueError(f"DPTConfig.out_channels must have 4 entries (one per level), got {self.out_channels}")
        if len(self.layers) != 4:
            raise ValueError(f"DPTConfig.layers must name 4 backbone blocks, got {self.layers}")
        if any(i < 0 for i in self.layers):
            raise ValueError(f"DPTConfig.layers are 0-based block indices >= 0, got {self.layers}")
        if self.metric and not self.max_depth > 0:
            raise ValueError(f"DPTConfig.max_depth must be > 0 for a metric head, got {self.max_depth}")
        self.out_channels = [int(c) for c in self.out_channels]
        self.layers = [int(i) for i in self.layers]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DPTConfig:
        """Build from a dict (e.g. a saved `config.json` section); unknown keys are an error."""
        return from_dict(cls, d, "DPTConfig")


class ResidualConvUnit(nn.Module):
    """Pre-activation residual unit: x + conv2(relu(conv1(relu(x))))."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, kernel_size=3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, kernel_size=3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv2(F.relu(self.conv1(F.relu(x))))


class FusionBlock(nn.Module):
    """One DPT refinement step: add the (refined) skip, refine, upsample, 1x1 project.

    The deepest block (`refinenet4`) has no skip input but still owns `resConfUnit1`, as the checkpoints do.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.out_conv = nn.Conv2d(channels, channels, kernel_size=1)
        self.resConfUnit1 = ResidualConvUnit(channels)
        self.resConfUnit2 = ResidualConvUnit(channels)

    def forward(self, x: Tensor, skip: Tensor | None = None, *, size: tuple[int, int] | None = None) -> Tensor:
        """x, skip: (B, F, h', w') at the same size -> (B, F, *size), or twice the size when size is None."""
        if skip is not None:
            x = x + self.resConfUnit1(skip)
        x = self.resConfUnit2(x)
        if size is None:
            x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)
        else:
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=True)
        return self.out_conv(x)


class DPTHead(nn.Module):
    """The DAv2 DPT head: four backbone features -> one depth map at the requested size.

    Levels 1..4 are reassembled at 4x, 2x, 1x and 1/2x the patch grid, projected to the fusion width, and fused from
    the deepest (coarsest) to the shallowest; the head then halves the channels, upsamples to the output size
    (bilinear, align_corners=True, as the official code does to the patch-multiple input size), and ends in two convs.
    Relative heads end in ReLU; metric heads in sigmoid * max_depth.
    """

    def __init__(self, cfg: DPTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        c, feat = cfg.out_channels, cfg.features
        if cfg.use_clstoken:
            self.readout_projects = nn.ModuleList(
                nn.Sequential(nn.Linear(2 * cfg.in_dim, cfg.in_dim), nn.GELU()) for _ in range(4)
            )
        self.projects = nn.ModuleList(nn.Conv2d(cfg.in_dim, ci, kernel_size=1) for ci in c)
        self.resize_layers = nn.ModuleList(
            [
                nn.ConvTranspose2d(c[0], c[0], kernel_size=4, stride=4),
                nn.ConvTranspose2d(c[1], c[1], kernel_size=2, stride=2),
                nn.Identity(),
                nn.Conv2d(c[3], c[3], kernel_size=3, stride=2, padding=1),
            ]
        )
        self.scratch = nn.Module()
        for k in range(1, 5):
            setattr(self.scratch, f"layer{k}_rn", nn.Conv2d(c[k - 1], feat, kernel_size=3, padding=1, bias=False))
        for k in range(1, 5):
            setattr(self.scratch, f"refinenet{k}", FusionBlock(feat))
        self.scratch.output_conv1 = nn.Conv2d(feat, feat // 2, kernel_size=3, padding=1)
        self.scratch.output_conv2 = nn.Sequential(
            nn.Conv2d(feat // 2, cfg.head_hidden, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.Conv2d(cfg.head_hidden, 1, kernel_size=1),
            nn.Sigmoid() if cfg.metric else nn.ReLU(),
        )

    def reset_parameters(self) -> None:
        """PyTorch's default initialisation of every layer (a DPT head is loaded from its checkpoint)."""
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)):
                m.reset_parameters()

    def forward(self, features: Features, size: tuple[int, int]) -> Tensor:
        """features: 4 tuples (patch (B, D, h, w), prefix (B, P, D)), normed; size: output (H, W) -> depth (B, H, W).

        To reproduce the official/HF output exactly pass size = (h * patch, w * patch); passing the image size of an
        image that is not a patch multiple upsamples straight to it (the official code resizes a second time).
        """
        if len(features) != 4:
            raise ValueError(f"DPTHead needs 4 features (blocks {self.cfg.layers}), got {len(features)}")
        levels = []
        for i, (patch, prefix) in enumerate(features):
            if self.cfg.use_clstoken:
                b, d, h, w = patch.shape
                tokens = patch.flatten(2).transpose(1, 2)  # (B, h*w, D)
                readout = prefix[:, :1].expand(-1, tokens.shape[1], -1)  # (B, h*w, D): the CLS token
                tokens = self.readout_projects[i](torch.cat([tokens, readout], dim=-1))  # (B, h*w, D)
                patch = tokens.transpose(1, 2).reshape(b, d, h, w)  # (B, D, h, w)
            x = self.resize_layers[i](self.projects[i](patch))  # (B, C_i, h * {4, 2, 1, 1/2}, ...)
            levels.append(x)
        s = self.scratch
        l1, l2, l3, l4 = (getattr(s, f"layer{k}_rn")(x) for k, x in enumerate(levels, start=1))  # (B, F, ., .)
        path = s.refinenet4(l4, size=l3.shape[2:])
        path = s.refinenet3(path, l3, size=l2.shape[2:])
        path = s.refinenet2(path, l2, size=l1.shape[2:])
        path = s.refinenet1(path, l1)  # (B, F, 8h, 8w)
        out = s.output_conv1(path)  # (B, F/2, 8h, 8w)
        out = F.interpolate(out, size=tuple(size), mode="bilinear", align_corners=True)  # (B, F/2, H, W)
        out = s.output_conv2(out)  # (B, 1, H, W)
        if self.cfg.metric:
            out = out * self.cfg.max_depth
        return out.squeeze(1)

    def flops(self, height: int, width: int, grid: tuple[int, int]) -> int:
        """Forward FLOPs (a multiply-add counts 2) of the convolutions and projections for one image whose patch grid
        is `grid` and output size height x width; interpolations, activations and biases are left out."""
        cfg, (h, w) = self.cfg, grid
        c, feat, d = cfg.out_channels, cfg.features, cfg.in_dim
        level_px = [16 * h * w, 4 * h * w, h * w, ((h + 1) // 2) * ((w + 1) // 2)]  # pixels of levels 1..4
        total = 0
        if cfg.use_clstoken:
            total += 4 * 2 * h * w * 2 * d * d
        total += sum(2 * h * w * d * ci for ci in c)  # projects
        total += 2 * level_px[0] * c[0] * c[0] + 2 * level_px[1] * c[1] * c[1]  # transposed convs: one tap per output
        total += 2 * level_px[3] * 9 * c[3] * c[3]  # strided 3x3 conv
        total += sum(2 * px * 9 * ci * feat for px, ci in zip(level_px, c))  # layerK_rn
        rcu = 2 * 2 * 9 * feat * feat  # one residual unit per input pixel
        fusion_out = [level_px[2], level_px[1], level_px[0], 4 * level_px[0]]  # refinenet4, 3, 2, 1
        fusion_in = [level_px[3], level_px[2], level_px[1], level_px[0]]
        for k, (n_in, n_out) in enumerate(zip(fusion_in, fusion_out)):
            total += (rcu * n_in if k > 0 else 0) + rcu * n_in + 2 * n_out * feat * feat
        total += 2 * fusion_out[-1] * 9 * feat * (feat // 2)  # output_conv1
        total += 2 * height * width * (9 * (feat // 2) * cfg.head_hidden + cfg.head_hidden)  # output_conv2
        return int(total)


# --------------------------------------------------------------------------------------------------------------------
# Detection heads (YOLOS)
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class DetectionHeadConfig:
    """YOLOS's heads on the detection tokens: two MLPs of `num_layers` Linear layers (width D, ReLU between)."""

    num_labels: int  # object classes; the class head has one more output, "no object"
    num_layers: int = 3
    # The name of each label index (HF `id2label`), when the source names them; evaluation maps a dataset's
    # categories to label indices by these names (`jetvit.tasks.detection.label_to_category`).
    labels: list[str] | None = None

    def __post_init__(self) -> None:
        if self.num_labels < 1 or self.num_layers < 1:
            raise ValueError(f"detection head needs num_labels >= 1 and num_layers >= 1, got {self}")
        if self.labels is not None and len(self.labels) != self.num_labels:
            raise ValueError(f"detection head labels name {len(self.labels)} classes, num_labels is {self.num_labels}")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DetectionHeadConfig:
        """Build from a dict (the model config's `detection_head`); unknown keys are an error."""
        return from_dict(cls, d, "detection_head")


class MlpHead(nn.Module):
    """Linear layers with ReLU between them (DETR's / YOLOS's prediction MLP)."""

    def __init__(self, dim: int, out: int, num_layers: int) -> None:
        super().__init__()
        widths = [dim] * num_layers + [out]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:]))

    def forward(self, x: Tensor) -> Tensor:
        for layer in self.layers[:-1]:
            x = F.relu(layer(x))
        return self.layers[-1](x)


class DetectionHead(nn.Module):
    """YOLOS: detection tokens (B, S, D) -> (class logits (B, S, num_labels + 1), sigmoid boxes (B, S, 4))."""

    def __init__(self, dim: int, cfg: DetectionHeadConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.class_head = MlpHead(dim, cfg.num_labels + 1, cfg.num_layers)
        self.box_head = MlpHead(dim, 4, cfg.num_layers)

    def reset_parameters(self) -> None:
        """PyTorch's default initialisation of every layer (YOLOS's heads are loaded from their checkpoint)."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                m.reset_parameters()

    def forward(self, tokens: Tensor) -> tuple[Tensor, Tensor]:
        return self.class_head(tokens), self.box_head(tokens).sigmoid()

    def flops(self, num_tokens: int) -> int:
        return sum(2 * num_tokens * m.in_features * m.out_features for m in self.modules() if isinstance(m, nn.Linear))


# --------------------------------------------------------------------------------------------------------------------
# Linear segmentation probe (DINOv3)
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class LinearSegConfig:
    """in_dim: backbone width D; num_classes: output classes; dropout: Dropout2d rate before the BatchNorm."""

    in_dim: int
    num_classes: int
    dropout: float = 0.1

    def __post_init__(self) -> None:
        if self.num_classes < 1:
            raise ValueError(f"LinearSegConfig.num_classes must be >= 1, got {self.num_classes}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"LinearSegConfig.dropout must be in [0, 1), got {self.dropout}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LinearSegConfig:
        return from_dict(cls, d, "LinearSegConfig")


class LinearSegHead(nn.Module):
    """DINOv3's linear probe: Dropout2d -> BatchNorm2d -> 1x1 conv -> bilinear upsample to the image size."""

    def __init__(self, cfg: LinearSegConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.dropout = nn.Dropout2d(cfg.dropout)
        self.bn = nn.BatchNorm2d(cfg.in_dim)
        self.conv = nn.Conv2d(cfg.in_dim, cfg.num_classes, kernel_size=1)

    def forward(self, patch: Tensor, size: tuple[int, int]) -> Tensor:
        """patch: normed last-block patch features (B, D, h, w); size: (H, W) -> logits (B, classes, H, W)."""
        logits = self.conv(self.bn(self.dropout(patch)))  # (B, classes, h, w)
        return F.interpolate(logits, size=tuple(size), mode="bilinear", align_corners=False)


# --------------------------------------------------------------------------------------------------------------------
# Linear classification probe (DINO v1 linear evaluation)
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class LinearClsConfig:
    """in_dim: backbone width D; num_classes: output classes; n_last_blocks: the CLS tokens of that many last blocks
    are concatenated; avgpool: the last block's mean patch token is appended (DINO: 4 blocks for ViT-S, 1 + avgpool
    for ViT-B)."""

    in_dim: int
    num_classes: int
    n_last_blocks: int = 1
    avgpool: bool = False

    def __post_init__(self) -> None:
        if self.num_classes < 1:
            raise ValueError(f"LinearClsConfig.num_classes must be >= 1, got {self.num_classes}")
        if self.n_last_blocks < 1:
            raise ValueError(f"LinearClsConfig.n_last_blocks must be >= 1, got {self.n_last_blocks}")

    @property
    def feature_dim(self) -> int:
        return self.in_dim * (self.n_last_blocks + int(self.avgpool))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LinearClsConfig:
        return from_dict(cls, d, "LinearClsConfig")


class LinearClsHead(nn.Module):
    """DINO's `LinearClassifier`: one linear layer (weights N(0, 0.01^2), zero bias) on concatenated global features."""

    def __init__(self, cfg: LinearClsConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.linear = nn.Linear(cfg.feature_dim, cfg.num_classes)
        nn.init.normal_(self.linear.weight, std=0.01)
        nn.init.zeros_(self.linear.bias)

    def features(self, feats: Features) -> Tensor:
        """The last `n_last_blocks` intermediates (patches (B, D, h, w), prefix (B, P, D)), oldest first ->
        (B, feature_dim): their CLS tokens, then (avgpool) the mean patch token of the last one."""
        if len(feats) != self.cfg.n_last_blocks:
            raise ValueError(f"the head reads {self.cfg.n_last_blocks} blocks, got features of {len(feats)}")
        parts = [prefix[:, 0] for _, prefix in feats]  # n_last_blocks x (B, D)
        if self.cfg.avgpool:
            parts.append(feats[-1][0].mean(dim=(2, 3)))  # (B, D)
        return torch.cat(parts, dim=-1)  # (B, feature_dim)

    def forward(self, feats: Features) -> Tensor:
        """Intermediates of the last `n_last_blocks` blocks (see `features`) -> logits (B, classes)."""
        return self.linear(self.features(feats).float())
