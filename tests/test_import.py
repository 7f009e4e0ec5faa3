"""`import jetvit` stays light: the package and its model load none of the heavy or optional libraries, and the model
none of the training, search or CLI code (checked in a fresh interpreter, whose `sys.modules` this test reads)."""

from __future__ import annotations

import json
import subprocess
import sys

# Plotting, Hugging Face, ONNX, logging, COCO, the sample photos and SciPy's stack: each imported where it is used.
HEAVY = (
    "matplotlib", "transformers", "huggingface_hub", "onnx", "onnxruntime", "onnxscript", "tensorboard", "pycocotools",
    "skimage", "scipy", "sklearn", "pandas", "cv2",
)  # fmt: skip
# The rooms above the model: using a model must not load them.
ABOVE_THE_MODEL = (
    "jetvit.train", "jetvit.search", "jetvit.cli", "jetvit.pipeline", "jetvit.experiment", "jetvit.bench",
    "jetvit.tasks", "jetvit.demo",
)  # fmt: skip


def modules_after(code: str) -> set[str]:
    """Every module a fresh interpreter holds after running `code`."""
    probe = f"{code}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=120)
    return set(json.loads(proc.stdout.splitlines()[-1]))


def loaded(modules: set[str], names: tuple[str, ...]) -> list[str]:
    return [n for n in names if n in modules or any(m.startswith(n + ".") for m in modules)]


def test_import_jetvit_loads_no_heavy_library_and_not_even_torch():
    modules = modules_after("import jetvit")
    assert "jetvit" in modules
    assert not loaded(modules, HEAVY + ("torch",)), loaded(modules, HEAVY + ("torch",))


def test_using_a_model_loads_no_heavy_library_and_nothing_above_it(tmp_path):
    # Build, convert, save, load and run a tiny hybrid: what a user of the model does.
    use = f"""
import torch, jetvit
teacher = jetvit.HybridViT(jetvit.ViTConfig(img_size=32, patch_size=8, dim=32, depth=2, num_heads=2, mlp_hidden=64))
student = jetvit.load(jetvit.save(jetvit.convert(teacher, "LW"), {str(tmp_path / "student")!r}))
assert student.arch == "LW" and student(torch.zeros(1, 3, 32, 32)).shape[0] == 1
"""
    modules = modules_after(use)
    assert {"jetvit.model", "jetvit.ops", "jetvit.io", "jetvit.conversion"} <= modules  # the probe sees what was used
    assert not loaded(modules, HEAVY + ABOVE_THE_MODEL), loaded(modules, HEAVY + ABOVE_THE_MODEL)
