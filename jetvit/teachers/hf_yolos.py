"""Hugging Face YOLOS (`model_type: yolos`: `YolosModel`, `YolosForObjectDetection`, `hustvl/yolos-base`) -> jetvit.

A plain ViT (layers named as HF ViT's, no LayerScale, q/k/v biases) with:

- `num_detection_tokens` learned detection tokens (100 in the released models) appended after the patches:
  `[CLS, patches row-major, detection tokens]`. jetvit keeps that order in every output and treats them as global
  tokens inside the blocks (`jetvit.model`, `ViTConfig.num_detection_tokens`).
- a learned position embedding for CLS + a non-square grid (`image_size` [800, 1344] -> 50x84 for YOLOS-Base) +
  the detection tokens; transformers' `InterpolateInitialPositionEmbeddings` resizes the patch part bicubically to
  the input's grid on every call (also at the stored size) and keeps CLS and detection entries: `pos_interp="yolos"`.
- with `use_mid_position_embeddings`, one more such embedding per block but the last, added to that block's output
  (`InterpolateMidPositionEmbeddings`, same resize): `ViTConfig.block_pos_embed`.
- `YolosForObjectDetection`'s heads on the normed detection tokens: `class_labels_classifier` (num_labels + 1
  outputs, the last "no object") and `bbox_predictor` (4, sigmoid (cx, cy, w, h)), each 3 Linear layers with ReLU
  between: `jetvit.heads.DetectionHead` (`model.predict_detections`).

Key names: the backbone is under `vit.` in `YolosForObjectDetection`, at the top in `YolosModel` (whose `pooler` is
dropped: jetvit distils features). The mid-layer embeddings are `encoder.mid_position_embeddings` in Hub files and
`encoder.interpolation.mid_position_embeddings` in a transformers 5.x state dict; both are accepted.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from jetvit.model import ViTConfig
from jetvit.teachers.common import apply_key_table, ensure
from jetvit.teachers.hf_vit import HF_DEFAULTS as VIT_DEFAULTS
from jetvit.teachers.hf_vit import block_key_table, detect_naming, encoder_fields

MODEL_TYPE = "yolos"
HEADS = {"class_head": "class_labels_classifier", "box_head": "bbox_predictor"}  # jetvit -> HF module names
MID_POS_KEYS = ("encoder.mid_position_embeddings", "encoder.interpolation.mid_position_embeddings")

# transformers' YolosConfig defaults (Hub configs may omit default-valued fields): ViT's, plus its own.
HF_DEFAULTS: dict[str, Any] = {
    **VIT_DEFAULTS,
    "image_size": [512, 864],
    "num_detection_tokens": 100,
    "use_mid_position_embeddings": True,
}


def _prefix(sd: dict[str, Tensor]) -> str:
    return "vit." if any(k.startswith("vit.") for k in sd) else ""


def _head_layers(sd: dict[str, Tensor], hf_name: str) -> int:
    n = 0
    while f"{hf_name}.layers.{n}.weight" in sd:
        n += 1
    return n


def label_names(id2label: dict[str, str] | None, num_labels: int) -> list[str] | None:
    """The class names of label indices 0..num_labels-1 from an HF `id2label` (keys are strings in `config.json`);
    None when it does not name exactly those indices or holds only transformers' placeholders `LABEL_i`. The COCO
    checkpoints (`hustvl/yolos-*`) name 91 labels, index == COCO category id, unused ids "N/A"."""
    if not id2label:
        return None
    try:
        names = {int(k): str(v) for k, v in id2label.items()}
    except (TypeError, ValueError):
        return None
    if sorted(names) != list(range(num_labels)) or all(names[i] == f"LABEL_{i}" for i in names):
        return None
    return [names[i] for i in range(num_labels)]


def config_from_hf(hf_config: dict[str, Any], sd: dict[str, Tensor] | None = None) -> ViTConfig:
    """The jetvit config of an HF YOLOS config (the parsed `config.json`) and its weights, which tell whether the
    detection heads are there, their depth and the number of classes (without weights: `architectures` and
    `id2label` of the config, 3 layers)."""
    model_type = hf_config.get("model_type", MODEL_TYPE)
    ensure(model_type == MODEL_TYPE, f"not a YOLOS config: model_type={model_type!r}; expected {MODEL_TYPE!r}")
    c = {**HF_DEFAULTS, **hf_config}
    ensure(c["hidden_act"] == "gelu", f"YOLOS hidden_act={c['hidden_act']!r} is not supported (only 'gelu')")
    patch = c["patch_size"]
    ensure(isinstance(patch, int), f"only square patches are supported, got patch_size={patch}")
    size = c["image_size"]
    img_h, img_w = (size, size) if isinstance(size, int) else size
    ensure(img_h % patch == 0 and img_w % patch == 0, f"image_size {size} is not a multiple of the patch {patch}")
    det_head = None
    if sd is None:
        if "YolosForObjectDetection" in (c.get("architectures") or []):
            det_head = {"num_labels": len(c.get("id2label") or {0: "", 1: ""}), "num_layers": 3}
        cls_layers = 0
    else:
        cls_layers = _head_layers(sd, HEADS["class_head"])
    if cls_layers:
        num_labels = sd[f"{HEADS['class_head']}.layers.{cls_layers - 1}.weight"].shape[0] - 1
        box_layers = _head_layers(sd, HEADS["box_head"])
        ensure(box_layers == cls_layers, f"class head has {cls_layers} layers but the box head {box_layers}")
        det_head = {"num_labels": num_labels, "num_layers": cls_layers}
    if det_head is not None:
        labels = label_names(c.get("id2label"), det_head["num_labels"])
        if labels is not None:
            det_head["labels"] = labels
    return ViTConfig(
        family="yolos",
        img_size=img_h,
        patch_size=patch,
        **encoder_fields(c),
        pos_interp="yolos",
        pos_grid=(img_h // patch, img_w // patch),
        num_detection_tokens=int(c["num_detection_tokens"]),
        block_pos_embed=bool(c["use_mid_position_embeddings"]),
        detection_head=det_head,
    )


def convert_state_dict(sd: dict[str, Tensor], cfg: ViTConfig, *, source: str = "checkpoint") -> dict[str, Tensor]:
    """HF YolosModel / YolosForObjectDetection state dict -> jetvit. Strict (ValueError names keys)."""
    p = _prefix(sd)
    table = block_key_table(cfg, naming=detect_naming(sd), prefix=p)
    table["pos_embed"] = (f"{p}embeddings.position_embeddings",)
    table["det_tokens"] = (f"{p}embeddings.detection_tokens",)
    if cfg.block_pos_embed:
        found = [p + k for k in MID_POS_KEYS if p + k in sd]
        ensure(len(found) == 1, f"{source}: expected one of {[p + k for k in MID_POS_KEYS]}, found {found}")
        table["block_pos_embed"] = (found[0],)
    if cfg.detection_head is not None:
        for ours, theirs in HEADS.items():
            for i in range(cfg.detection_head["num_layers"]):
                for w in ("weight", "bias"):
                    table[f"detection_head.{ours}.layers.{i}.{w}"] = (f"{theirs}.layers.{i}.{w}",)
    ignore = [f"{p}pooler.dense.weight", f"{p}pooler.dense.bias"]
    return apply_key_table(sd, table, ignore=ignore, source=f"{source} (HF YOLOS)")
