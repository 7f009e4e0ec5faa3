"""Adapters: the calls that users' code already makes on a DINOv2/DINOv3 backbone, a Hugging Face `transformers`
model or backbone, or a timm ViT, answered by a `HybridViT` (which inherits `BackboneAPI`).

- official DINOv2 / DINOv3 heads (DAv2's `DepthAnythingV2.forward`, DINOv3's eval heads): `get_intermediate_layers`,
  `forward_features`, and the attributes `embed_dim`, `patch_size`, `n_blocks`, `n_storage_tokens`,
  `num_register_tokens`;
- Hugging Face `AutoModel` users: `model(pixel_values=..., output_hidden_states=..., return_dict=...)`;
- `transformers` task models built on a backbone (`DepthAnythingForDepthEstimation`, ...): `JetViTBackbone(model,
  out_indices=...)` in place of theirs;
- timm users: `forward_head`, `num_features`, `forward_intermediates` (timm's contract).

One name, one meaning: `forward_features` is the official DINOv2/DINOv3 dict (the users who convert a DINOv2/DINOv3
teacher call it that way; timm's `forward_features` would be the normed tokens, which `model(x)` already returns),
and `forward_head` accepts that dict as well as tokens. jetvit's own per-block features are `block_features`.

Everything here reads the model through `prepare_tokens`, `_block`, `_teacher_order`, `norm`, `block_features` and
`forward_hidden_states`: no adapter changes what the model computes. Nothing here imports `transformers` unless it is
installed and an HF-style output is asked for; nothing imports the rest of jetvit (the file is bundled into the
saved model's remote code, `jetvit.hub`).
"""

from __future__ import annotations

import dataclasses
import importlib.util
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

# The keywords of a Hugging Face vision model's forward that the hybrid answers; any other keyword is an error.
HF_KEYWORDS = ("pixel_values", "output_hidden_states", "output_attentions", "return_dict", "interpolate_pos_encoding")


@dataclasses.dataclass
class HFOutput:
    """`transformers`' `BaseModelOutputWithPooling` where `transformers` is not installed: the same fields, read as
    attributes or by name."""

    last_hidden_state: Tensor
    pooler_output: Tensor
    hidden_states: tuple[Tensor, ...] | None = None
    attentions: tuple[Tensor, ...] | None = None

    def __getitem__(self, key: str | int) -> Any:
        if isinstance(key, str):
            return getattr(self, key)
        return self.to_tuple()[key]

    def to_tuple(self) -> tuple[Any, ...]:
        values = (getattr(self, f.name) for f in dataclasses.fields(self))
        return tuple(v for v in values if v is not None)


@dataclasses.dataclass
class HFBackboneOutput:
    """`transformers`' `BackboneOutput` where `transformers` is not installed."""

    feature_maps: tuple[Tensor, ...]
    hidden_states: tuple[Tensor, ...] | None = None
    attentions: tuple[Tensor, ...] | None = None

    def __getitem__(self, key: str | int) -> Any:
        if isinstance(key, str):
            return getattr(self, key)
        return tuple(v for v in (self.feature_maps, self.hidden_states) if v is not None)[key]


def _has_transformers() -> bool:
    return importlib.util.find_spec("transformers") is not None


def hf_model_output(**fields: Any) -> Any:
    """`BaseModelOutputWithPooling(**fields)` of `transformers` when it is installed, else `HFOutput`."""
    if _has_transformers():
        from transformers.modeling_outputs import BaseModelOutputWithPooling

        return BaseModelOutputWithPooling(**fields)
    return HFOutput(**fields)


def hf_backbone_output(**fields: Any) -> Any:
    """`BackboneOutput(**fields)` of `transformers` when it is installed, else `HFBackboneOutput`."""
    if _has_transformers():
        from transformers.modeling_outputs import BackboneOutput

        return BackboneOutput(**fields)
    return HFBackboneOutput(**fields)


def _last_n(n: Any, depth: int, what: str) -> list[int]:
    """The official and timm meaning of an int `n`: the last n blocks (0-based indices, in order)."""
    if isinstance(n, bool) or not 1 <= n <= depth:
        raise ValueError(f"{what}={n!r}: an int asks for the last n blocks, 1..{depth} for this {depth}-block model")
    return list(range(depth - n, depth))


class BackboneAPI:
    """The official DINOv2/DINOv3, Hugging Face and timm entry points of `HybridViT` (mixed into it; see the module
    docstring). Token order throughout: the teacher's (CLS, registers, patches row-major, YOLOS's detection tokens)."""

    # -- attributes the official and timm heads read -----------------------------------------------------------

    @property
    def embed_dim(self) -> int:
        return self.cfg.dim

    @property
    def num_features(self) -> int:
        """timm and DINOv2: the width of the pooled feature."""
        return self.cfg.dim

    @property
    def patch_size(self) -> int:
        return self.cfg.patch_size

    @property
    def n_blocks(self) -> int:
        return len(self.blocks)

    @property
    def n_storage_tokens(self) -> int:
        """DINOv3's name for the register tokens."""
        return self.cfg.num_registers

    @property
    def num_register_tokens(self) -> int:
        """DINOv2's name for the register tokens."""
        return self.cfg.num_registers

    # -- official DINOv2 / DINOv3 -------------------------------------------------------------------------------

    def get_intermediate_layers(
        self,
        x: Tensor,
        n: int | Sequence[int] = 1,
        reshape: bool = False,
        return_class_token: bool = False,
        return_extra_tokens: bool = False,
        norm: bool = True,
    ) -> tuple[Any, ...]:
        """The official DINOv2/DINOv3 call. `n` an int: the last n blocks; a sequence: those block indices (0-based;
        negatives count from the end, which the official code silently ignores). Outputs in block order, one per block:
        patch tokens (B, h*w, D), or (B, D, h, w) with `reshape`; with `return_class_token` a tuple (patches, CLS
        (B, D)); with `return_extra_tokens` (DINOv3) the register tokens (B, R, D) after those. After the final norm
        when `norm`."""
        depth = len(self.blocks)
        idx = _last_n(n, depth, "n") if isinstance(n, int) else sorted(set(self.block_indices(n)))
        R = self.cfg.num_registers
        out = []
        for patches, glob in self.block_features(x, idx, norm=norm):  # (B, D, h, w), (B, G, D)
            feat = patches if reshape else patches.flatten(2).transpose(1, 2)  # (B, h*w, D)
            extra = [glob[:, 0]] if return_class_token else []
            if return_extra_tokens:
                extra.append(glob[:, 1 : 1 + R])
            out.append((feat, *extra) if extra else feat)
        return tuple(out)

    def forward_features(self, x: Tensor, masks: Tensor | None = None) -> dict[str, Tensor | None]:
        """The official DINOv2/DINOv3 dict: `x_norm_clstoken` (B, D), `x_storage_tokens` and its DINOv2 name
        `x_norm_regtokens` (B, R, D), `x_norm_patchtokens` (B, h*w, D), `x_prenorm` (B, N, D, every token before the
        final norm) and `masks` (None). YOLOS's detection tokens are in `x_prenorm` only."""
        if masks is not None:
            raise ValueError("masks= (iBOT's masked patch tokens) is a pretraining input; the hybrid takes none")
        h, w = self.grid_size(x.shape[-2], x.shape[-1])
        tokens, layout = self.prepare_tokens(x)
        for i, blk in enumerate(self.blocks):
            tokens = self._block(i, blk, tokens, layout)
        prenorm = self._teacher_order(tokens)  # (B, N, D)
        normed = self.norm(prenorm)
        P = self.cfg.num_prefix_tokens
        registers = normed[:, 1:P]  # (B, R, D)
        return {
            "x_norm_clstoken": normed[:, 0],
            "x_storage_tokens": registers,
            "x_norm_regtokens": registers,
            "x_norm_patchtokens": normed[:, P : P + h * w],
            "x_prenorm": prenorm,
            "masks": None,
        }

    # -- Hugging Face -------------------------------------------------------------------------------------------

    def hf_forward(self, x: Tensor | None = None, **kwargs: Any) -> Any:
        """`model(pixel_values=..., output_hidden_states=..., return_dict=...)`, as a `transformers` vision model is
        called: `last_hidden_state` (B, N, D, normed; `model(x)`), `pooler_output` (B, D, the normed CLS token) and,
        with `output_hidden_states`, `hidden_states` (the embeddings and every block's output, before the norm).
        `return_dict=False`: the tuple of those. Attention maps do not exist for `L` blocks: `output_attentions` must
        be off. `interpolate_pos_encoding` is accepted and has no effect (the hybrid always interpolates)."""
        unknown = sorted(set(kwargs) - set(HF_KEYWORDS))
        if unknown:
            raise TypeError(f"unexpected keyword argument(s) {unknown}; the Hugging Face call takes {HF_KEYWORDS}")
        pixel_values = kwargs.get("pixel_values")
        if (x is None) == (pixel_values is None):
            raise ValueError("pass the images once: model(x) or model(pixel_values=x)")
        if kwargs.get("output_attentions"):
            raise ValueError("output_attentions=True: linear (L) and window (W) blocks have no N x N attention map")
        images = x if x is not None else pixel_values
        hidden = None
        if kwargs.get("output_hidden_states"):
            hidden = tuple(self.forward_hidden_states(images))
            last = self.norm(hidden[-1])
        else:
            last = self(images)
        out = hf_model_output(last_hidden_state=last, pooler_output=last[:, 0], hidden_states=hidden)
        if kwargs.get("return_dict", True) is False:
            return out.to_tuple()
        return out

    # -- timm ---------------------------------------------------------------------------------------------------

    def forward_head(self, x: Tensor | dict[str, Any], pre_logits: bool = False) -> Tensor:
        """timm's pooling step on `forward_features`' output (the dict) or on normed tokens (B, N, D, `model(x)`): the
        CLS token (B, D), timm's `global_pool='token'`. The hybrid has no classifier (timm's `num_classes=0`), so
        `pre_logits` changes nothing."""
        if isinstance(x, dict):
            return x["x_norm_clstoken"]
        if not isinstance(x, Tensor) or x.ndim != 3:
            raise ValueError(f"forward_head takes forward_features' dict or tokens (B, N, D), got {type(x).__name__}")
        return x[:, 0]

    def forward_intermediates(
        self,
        x: Tensor,
        indices: int | Sequence[int] | None = None,
        *,
        return_prefix_tokens: bool = False,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> Any:
        """timm's contract: `(final, intermediates)`, or `intermediates` alone with `intermediates_only`.

        `indices`: None every block, an int the last n blocks, a sequence those block indices (negatives from the
        end); intermediates come in block order. Each is the block's patch tokens, `NCHW` (B, D, h, w) or `NLC`
        (B, h*w, D), after the final norm when `norm`; with `return_prefix_tokens` a tuple (patches, the other tokens
        (B, G, D)). `final`: every token after the last block and the final norm (B, N, D), as `model(x)`; with
        `stop_early` (or `intermediates_only`) the blocks after the deepest requested one are not run, and `final` is
        the deepest requested block's normed tokens."""
        if output_fmt not in ("NCHW", "NLC"):
            raise ValueError(f"output_fmt={output_fmt!r}; timm's ViT formats are 'NCHW' and 'NLC'")
        depth = len(self.blocks)
        if indices is None:
            take = list(range(depth))
        elif isinstance(indices, int):
            take = _last_n(indices, depth, "indices")
        else:
            take = self.block_indices(indices)
        h, w = self.grid_size(x.shape[-2], x.shape[-1])
        P = self.cfg.num_prefix_tokens
        stop = max(take) + 1 if stop_early or intermediates_only else depth
        tokens, layout = self.prepare_tokens(x)
        intermediates = []
        for i, blk in enumerate(self.blocks[:stop]):
            tokens = self._block(i, blk, tokens, layout)
            if i in take:
                y = self._teacher_order(tokens)
                y = self.norm(y) if norm else y  # (B, N, D)
                patches = y[:, P : P + h * w]  # (B, h*w, D)
                if output_fmt == "NCHW":
                    patches = patches.transpose(1, 2).reshape(y.shape[0], -1, h, w)  # (B, D, h, w)
                prefix = torch.cat((y[:, :P], y[:, P + h * w :]), dim=1)  # (B, G, D)
                intermediates.append((patches, prefix) if return_prefix_tokens else patches)
        if intermediates_only:
            return intermediates
        return self.norm(self._teacher_order(tokens)), intermediates


class JetViTBackbone(nn.Module):
    """A hybrid as a `transformers` backbone (`AutoBackbone`'s contract): `forward(pixel_values)` returns
    `BackboneOutput(feature_maps=...)` of the stages `out_indices`, which `transformers`' task models
    (`DepthAnythingForDepthEstimation`, DPT, ...) read.

    Stages as in `Dinov2Backbone`: `stem` (the embeddings, index 0) and `stage1`..`stageL` (block i's output is
    stage i + 1). Each feature map is normed by the final norm (`apply_layernorm`) and laid out as `Dinov2Backbone`
    does it: CLS then patch tokens (B, 1 + h*w, D), or with `reshape_hidden_states` the patch grid (B, D, h, w).
    Register and detection tokens are left out, so that a neck that drops the first token finds the patch grid.

    Replace a task model's backbone with it: `hf_model.backbone = JetViTBackbone(hybrid, out_indices=[3, 6, 9, 12])`.
    """

    has_attentions = False

    def __init__(
        self,
        model: nn.Module,
        *,
        out_indices: Sequence[int] | None = None,
        reshape_hidden_states: bool = False,
        apply_layernorm: bool = True,
    ) -> None:
        super().__init__()
        self.model = model
        depth = len(model.blocks)
        self.stage_names = ["stem"] + [f"stage{i}" for i in range(1, depth + 1)]
        if out_indices is None:
            out_indices = [depth]
        bad = [i for i in out_indices if not -len(self.stage_names) <= i < len(self.stage_names)]
        if bad:
            raise ValueError(f"out_indices {bad} out of range: stages 0 (stem) .. {depth} for a {depth}-block model")
        self.out_indices = [i % len(self.stage_names) for i in out_indices]
        self.out_features = [self.stage_names[i] for i in self.out_indices]
        self.reshape_hidden_states, self.apply_layernorm = reshape_hidden_states, apply_layernorm

    @property
    def channels(self) -> list[int]:
        return [self.model.cfg.dim] * len(self.out_indices)

    def forward_with_filtered_kwargs(self, *args: Any, **kwargs: Any) -> Any:
        """`transformers`' `BackboneMixin` entry point (what its task models call): options the hybrid has no use for
        are dropped."""
        kwargs = {k: v for k, v in kwargs.items() if k in ("output_hidden_states", "return_dict")}
        return self(*args, **kwargs)

    def forward(
        self,
        pixel_values: Tensor,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        return_dict: bool | None = None,
    ) -> Any:
        if output_attentions:
            raise ValueError("output_attentions=True: linear (L) and window (W) blocks have no N x N attention map")
        m = self.model
        states = m.forward_hidden_states(pixel_values)  # L + 1 of (B, N, D), before the norm
        h, w = m.grid_size(pixel_values.shape[-2], pixel_values.shape[-1])
        P = m.cfg.num_prefix_tokens
        maps = []
        for i in self.out_indices:
            y = m.norm(states[i]) if self.apply_layernorm else states[i]
            patches = y[:, P : P + h * w]  # (B, h*w, D)
            if self.reshape_hidden_states:
                maps.append(patches.transpose(1, 2).reshape(y.shape[0], -1, h, w))  # (B, D, h, w)
            else:
                maps.append(torch.cat((y[:, :1], patches), dim=1))  # (B, 1 + h*w, D)
        out = hf_backbone_output(
            feature_maps=tuple(maps), hidden_states=tuple(states) if output_hidden_states else None
        )
        return out.to_tuple() if return_dict is False else out
