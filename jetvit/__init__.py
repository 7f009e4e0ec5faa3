"""jetvit: Post-Training Attention Search for pretrained vision foundation ViTs.

    import jetvit
    teacher = jetvit.load_teacher("facebook/dinov3-vits16-pretrain-lvd1689m")   # arch "FFFFFFFFFFFF"
    student = jetvit.convert(teacher, "LLWLWWLFLLWF")                          # every weight inherited
    jetvit.save(student, "out/student"); student = jetvit.load("out/student")
    jetvit.push("out/student", "user/name"); student = jetvit.load("user/name")  # the Hugging Face Hub

Imports are lazy so that `import jetvit` stays light.
"""

from __future__ import annotations

import importlib
from typing import Any

# The one version string: pyproject.toml reads it (`[tool.setuptools.dynamic]`), saved models record it.
__version__ = "0.1.0"

_EXPORTS = {
    "HybridViT": "jetvit.model",
    "ViTConfig": "jetvit.model",
    "LinearAttnConfig": "jetvit.model",
    "convert": "jetvit.conversion",
    "save": "jetvit.io",
    "load": "jetvit.io",
    "load_teacher": "jetvit.teachers",
    "push": "jetvit.hub",
    "JetViTBackbone": "jetvit.adapters",
    "export_onnx": "jetvit.export",  # onnx itself is imported by the export, not here
}
__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'jetvit' has no attribute {name!r}")
