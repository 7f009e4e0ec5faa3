"""Sharing a hybrid: provenance (jetvit version and commit, the teacher, its weights' hash and licence), the model card,
the modeling code that loads a saved folder without jetvit, and the Hugging Face Hub (push, load by id).

What `jetvit.save` writes into a model folder, besides `model.safetensors`:

- `config.json`: jetvit's config (`format`, `config`, ...), `provenance`, and the `model_type`/`auto_map` keys
  `transformers` reads;
- `modeling_jetvit.py`, `configuration_jetvit.py`: the model's code bundled from the package (`remote_code`), for
  `AutoModel.from_pretrained(folder, trust_remote_code=True)` without jetvit;
- `preprocessor_config.json`: resize to the native size, the model's mean/std (`AutoImageProcessor`);
- `README.md`: the model card, when a run's summary is given (`model_card`).

Teacher licences carried forward (`LICENSES`; from the teachers' Hub model cards and the Depth-Anything-V2 README):
DINOv3 weights: the DINOv3 License; DINOv2 and Depth-Anything-V2-Small: Apache-2.0; Depth-Anything-V2-Base/Large/Giant:
CC-BY-NC-4.0; jetvit's built-in teacher: Apache-2.0, jetvit's. A teacher not in the table is recorded with licence
`null` and the card says to check it.
"""

from __future__ import annotations

import ast
import hashlib
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

# (pattern searched in the teacher's id or file name, lower case; SPDX id or name; where the text is)
LICENSES: tuple[tuple[str, str, str], ...] = (
    ("dinov3", "DINOv3 License", "https://ai.meta.com/resources/models-and-libraries/dinov3-license/"),
    (r"depth[-_]anything[-_]v2.*(small|vits)", "Apache-2.0", "https://www.apache.org/licenses/LICENSE-2.0"),
    (
        r"depth[-_]anything[-_]v2.*(base|large|giant|vitb|vitl|vitg)",
        "CC-BY-NC-4.0",
        "https://creativecommons.org/licenses/by-nc/4.0/",
    ),
    ("dinov2", "Apache-2.0", "https://www.apache.org/licenses/LICENSE-2.0"),
)
# A licence -> the Hub card's metadata (`license`, and `license_name`/`license_link` for `other`).
HUB_LICENSE = {"Apache-2.0": "apache-2.0", "CC-BY-NC-4.0": "cc-by-nc-4.0"}
HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")
MODELING_NAME, CONFIGURATION_NAME = "modeling_jetvit.py", "configuration_jetvit.py"
PREPROCESSOR_NAME, CARD_NAME = "preprocessor_config.json", "README.md"
UPLOADED = (MODELING_NAME, CONFIGURATION_NAME, PREPROCESSOR_NAME, CARD_NAME)  # with the weights and config.json
# The package's files bundled into `modeling_jetvit.py`, in dependency order.
BUNDLED = ("_config.py", "ops.py", "heads.py", "adapters.py", "model.py")
KIND_MEANINGS = {
    "F": "full softmax attention over all tokens (the teacher's)",
    "W": "softmax attention within non-overlapping windows of the patch grid; global tokens attend to all",
    "L": "ReLU linear attention plus a squeeze dynamic depthwise convolution on V; global tokens attend exactly",
}


# ---------------------------------------------------------------------------------------------------------------
# Provenance


def teacher_licence(src: str) -> dict[str, str] | None:
    """The licence of a teacher's weights from its id or file name (`LICENSES`), or None when unknown."""
    name = str(src).lower()
    if name == "builtin":  # the packaged built-in teacher: trained by jetvit, under jetvit's licence
        return {"name": "Apache-2.0", "url": "https://www.apache.org/licenses/LICENSE-2.0"}
    for pattern, licence, url in LICENSES:
        if re.search(pattern, name):
            return {"name": licence, "url": url}
    return None


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def teacher_weight_files(src: str) -> list[Path]:
    """The weight files a teacher source reads: the file itself, the weight files of its folder, or those of a Hub id
    in the local cache (nothing is downloaded). Empty when none is found."""
    from jetvit.teachers import WEIGHT_SUFFIXES, source_path

    path = source_path(src)
    if path is None:  # a Hub id: the cached snapshot, if any
        try:
            from huggingface_hub import snapshot_download

            path = Path(snapshot_download(src, allow_patterns=["*.safetensors"], local_files_only=True))
        except Exception:  # not cached, or huggingface_hub missing: no hash rather than a failed save
            return []
    if path.is_file():
        return [path]
    if path.is_dir():
        return sorted(p for p in path.iterdir() if p.is_file() and p.suffix in WEIGHT_SUFFIXES)
    return []


def weights_sha256(files: list[Path]) -> str | None:
    """sha256 of one weight file (the Hub's LFS id of that file), or of the lines `name sha256` of several."""
    if not files:
        return None
    if len(files) == 1:
        return file_sha256(files[0])
    return hashlib.sha256("".join(f"{p.name} {file_sha256(p)}\n" for p in files).encode()).hexdigest()


def teacher_provenance(src: str) -> dict[str, Any]:
    """`{"id", "sha256", "license"}` of a teacher source. A teacher that is itself a jetvit model passes on its own
    teacher's licence (a derived model inherits it)."""
    from jetvit import io

    files = teacher_weight_files(src)
    licence = teacher_licence(src)
    if files and io.is_jetvit_dir(files[0].parent):
        upstream = (io.read_json(files[0].parent / io.CONFIG_NAME, {}).get("provenance") or {}).get("teacher") or {}
        licence = upstream.get("license") or licence
    return {"id": str(src), "sha256": weights_sha256(files), "license": licence}


def source_commit() -> str | None:
    """The commit of the git checkout that jetvit's own files come from, with '+dirty' when they differ from it; None
    when jetvit is not run from a checkout (installed from a wheel, even inside another project's repository: the
    package's files must be tracked by the repository for its commit to count)."""
    pkg = Path(__file__).resolve().parent

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=pkg, capture_output=True, text=True, check=True).stdout.strip()

    try:
        git("ls-files", "--error-unmatch", "__init__.py")  # fails unless this very file is tracked
        head = git("rev-parse", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no", "--", ".")
    except (OSError, subprocess.CalledProcessError):
        return None
    return head + ("+dirty" if dirty else "")


def provenance(teacher: str | None = None) -> dict[str, Any]:
    """What `config.json` records about where a model comes from."""
    import torch

    from jetvit import __version__

    return {
        "jetvit_version": __version__,
        "jetvit_commit": source_commit(),
        "torch_version": torch.__version__,
        "teacher": teacher_provenance(teacher) if teacher else None,
    }


def run_command() -> str | None:
    """The `jetvit ...` command line of this process, or None when jetvit was called from Python."""
    name = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else ""
    if name == "jetvit" or (name == "__main__.py" and "jetvit" in Path(sys.argv[0]).parent.name):
        return shlex.join(["jetvit", *sys.argv[1:]])
    return None


# ---------------------------------------------------------------------------------------------------------------
# The model card


def _gflops(n: float) -> str:
    return f"{n / 1e9:.4g}"


def model_card(meta: dict[str, Any], summary: dict[str, Any]) -> str:
    """README.md for a saved model: `meta` is its `config.json`, `summary` the run's (`jetvit.pipeline`: teacher,
    arch, flops_resolution, teacher_flops, flops, scorer, teacher_score, final_score, data; optional: holdout,
    command, speedups = [{"device", "resolution", "speedup"}, ...] measured by `jetvit bench`)."""
    prov = meta.get("provenance") or {}
    teacher = prov.get("teacher") or {}
    licence = teacher.get("license")
    arch, cfg = meta["arch"], meta["config"]
    front = ["---", "library_name: jetvit", "tags:", "- jetvit", "- vision", "- linear-attention"]
    if licence and licence["name"] in HUB_LICENSE:
        front.append(f"license: {HUB_LICENSE[licence['name']]}")
    elif licence:
        slug = re.sub(r"[^a-z0-9]+", "-", licence["name"].lower()).strip("-")
        front += ["license: other", f"license_name: {slug}", f"license_link: {licence['url']}"]
    if teacher.get("id") and HUB_ID.match(teacher["id"]):
        front.append(f"base_model: {teacher['id']}")
    front.append("---")
    counts = ", ".join(f"{arch.count(k)} {k}" for k in "FWL" if k in arch)
    window = f" ({cfg['window_size']}x{cfg['window_size']} patches)"
    kinds = [f"- `{k}`: {KIND_MEANINGS[k]}" + (window if k == "W" else "") for k in "FWL" if k in arch]
    lines = [
        *front,
        "",
        f"# jetvit hybrid `{arch}` of `{teacher.get('id', summary.get('teacher', 'unknown'))}`",
        "",
        f"A {cfg['family']} ViT ({cfg['depth']} blocks, width {cfg['dim']}, patch {cfg['patch_size']}) converted from "
        f"its teacher by jetvit (the teacher's weights inherited), then distilled ({counts}). Block i uses the "
        f"attention kind of letter i of `{arch}`:",
        "",
        *kinds,
        "",
        "## Teacher",
        "",
        f"- id: `{teacher.get('id')}`",
        f"- sha256 of its weights: `{teacher.get('sha256')}`",
        "- licence: "
        + (
            f"{licence['name']} ({licence['url']}); the weights here derive from the teacher's and carry its licence"
            if licence
            else "unknown to jetvit: the weights derive from the teacher's, check its licence"
        ),
    ]
    if "flops" in summary and "teacher_flops" in summary:
        H, W = summary["flops_resolution"]
        ratio = summary["teacher_flops"] / summary["flops"]
        lines += [
            "",
            "## Cost and speed",
            "",
            f"- FLOPs at {H}x{W}: {_gflops(summary['flops'])} G, the teacher's {_gflops(summary['teacher_flops'])} G "
            f"({ratio:.2f}x fewer)",
        ]
        speedups = summary.get("speedups") or []
        for s in speedups:
            lines.append(f"- measured speedup at {s['resolution']} on {s['device']}: {s['speedup']:.2f}x")
        if not speedups:
            lines.append("- measured speedup: not measured by this run (`jetvit bench` measures it on your device)")
    if "final_score" in summary:
        data = summary.get("data", "unknown data")
        held = f"{summary['holdout']} held-out images" if "holdout" in summary else "held-out images"
        lines += ["", "## Scores", "", f"`{summary.get('scorer')}` (higher is better) on {held} of {data}:", ""]
        lines += ["| model | score |", "|---|---|"]
        if "teacher_score" in summary:
            lines.append(f"| teacher | {summary['teacher_score']:.6g} |")
        if "start_score" in summary:
            lines.append(f"| converted, before distillation | {summary['start_score']:.6g} |")
        lines.append(f"| this hybrid | {summary['final_score']:.6g} |")
    if summary.get("command"):
        lines += ["", "## Command", "", "```", summary["command"], "```"]
    lines += [
        "",
        "## Use",
        "",
        "```python",
        "import jetvit",
        'model = jetvit.load("REPO")  # or a local folder; model(x) -> normed tokens (B, N, D)',
        "# without jetvit:",
        "from transformers import AutoModel",
        'model = AutoModel.from_pretrained("REPO", trust_remote_code=True)',
        "```",
        "",
        f"Made with jetvit {prov.get('jetvit_version')} (commit `{prov.get('jetvit_commit')}`).",
        "",
    ]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------------
# Loading without jetvit: the bundled modeling code


def hf_config_fields() -> dict[str, Any]:
    """The `config.json` keys that let `transformers` load the folder with `trust_remote_code=True`."""
    return {
        "model_type": "jetvit",
        "architectures": ["JetViTModel"],
        "auto_map": {
            "AutoConfig": "configuration_jetvit.JetViTConfig",
            "AutoModel": "modeling_jetvit.JetViTModel",
        },
    }


def preprocessor_config(cfg: Any) -> dict[str, Any]:
    """A `ViTImageProcessor` config: resize to the native size, scale to [0, 1], normalise with the model's mean/std."""
    return {
        "image_processor_type": "ViTImageProcessor",
        "do_resize": True,
        "size": {"height": cfg.img_size, "width": cfg.img_size},
        "resample": 3,  # bicubic
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": list(cfg.mean),
        "image_std": list(cfg.std),
    }


_CONFIGURATION = '''"""The transformers config of a jetvit hybrid: jetvit's own config.json, read as it is
(`jetvit_config` is the `ViTConfig` as a dict). Written by jetvit {version}."""

from transformers import PretrainedConfig


class JetViTConfig(PretrainedConfig):
    model_type = "jetvit"

    def __init__(self, config=None, arch=None, provenance=None, **kwargs):
        self.jetvit_config = config
        self.arch = arch
        self.provenance = provenance
        super().__init__(**kwargs)
'''

_MODEL = '''

# ---------------------------------------------------------------------------------------------------------------
# transformers


from transformers import PreTrainedModel  # noqa: E402

from .configuration_jetvit import JetViTConfig  # noqa: E402


class JetViTModel(PreTrainedModel):
    """The hybrid behind `AutoModel`: `model(pixel_values=...)` returns `BaseModelOutputWithPooling`; the weights
    are jetvit's `model.safetensors` as saved (their names gain the `jetvit.` prefix on loading)."""

    config_class = JetViTConfig
    base_model_prefix = "jetvit"
    main_input_name = "pixel_values"

    def __init__(self, config):
        super().__init__(config)
        self.jetvit = HybridViT(ViTConfig.from_dict(config.jetvit_config))
        self.post_init()

    def _init_weights(self, module):
        pass  # every tensor comes from model.safetensors (HybridViT.init_weights for a model built from scratch)

    def forward(self, pixel_values=None, output_hidden_states=None, return_dict=None, **kwargs):
        return self.jetvit(
            pixel_values=pixel_values, output_hidden_states=output_hidden_states, return_dict=return_dict, **kwargs
        )
'''


def _top_level_names(tree: ast.Module) -> set[str]:
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
    return names


def remote_code() -> dict[str, str]:
    """{file name: text} of the modeling code saved beside the weights: `BUNDLED` (the package's model, heads,
    ops, adapters and config checks) in one file, their `jetvit` imports replaced by the bundled names, plus the
    `transformers` classes. The Triton kernels are not bundled: the bundled `L` block always runs its plain path
    (`jetvit.ops`, the kernels' reference)."""
    from jetvit import __version__

    root = Path(__file__).resolve().parent
    parts, seen = [], {}
    for name in BUNDLED:
        text = (root / name).read_text(encoding="utf-8")
        tree = ast.parse(text)
        for n in _top_level_names(tree):
            if n in seen and not n.startswith("__"):
                raise AssertionError(f"{name} and {seen[n]} both define {n!r}: the bundle would lose one")
            seen[n] = name
        out = []
        for line in text.splitlines():
            if line.startswith("from __future__"):
                continue
            if re.match(r"^(from jetvit\S* import|import jetvit)", line):
                assert "(" not in line, f"{name}: a multi-line jetvit import cannot be bundled: {line}"
                continue
            indented = re.match(r"^(\s+)from jetvit\S* import", line)
            if indented:  # only the Triton paths import jetvit lazily; the bundle never takes them
                line = f"{indented.group(1)}raise NotImplementedError('not in the bundled model code: {line.strip()}')"
            out.append(line)
        parts.append(f"# {'-' * 111}\n# jetvit/{name}\n\n" + "\n".join(out))
        if name == "ops.py":
            funcs = sorted(n.name for n in tree.body if isinstance(n, ast.FunctionDef))
            parts.append("ops = types.SimpleNamespace(" + ", ".join(f"{f}={f}" for f in funcs) + ")\n")
    header = (
        f'"""A jetvit hybrid ViT, bundled from jetvit {__version__} ({", ".join("jetvit/" + n for n in BUNDLED)}) so '
        f"that\n`transformers.AutoModel.from_pretrained(folder, trust_remote_code=True)` loads it without jetvit. "
        f'Generated by\njetvit.hub.remote_code; edit jetvit, not this file."""\n\n'
        "from __future__ import annotations\n\nimport types\n\n"
        "# The fused Triton kernels are not bundled: the plain path (the kernels' reference) runs everywhere.\n"
        "kernels = types.SimpleNamespace(use_triton=lambda is_cuda, num_tokens: False)\n\n"
    )
    return {
        MODELING_NAME: header + "\n\n".join(parts) + _MODEL,
        CONFIGURATION_NAME: _CONFIGURATION.format(version=__version__),
    }


# ---------------------------------------------------------------------------------------------------------------
# The Hub


def snapshot(repo_id: str, *, revision: str | None = None) -> Path:
    """The local folder of a jetvit model on the Hub: `huggingface_hub.snapshot_download` of its config and weights
    (from the local cache when `HF_HUB_OFFLINE=1` or offline)."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError as e:
        raise FileNotFoundError(
            f"{repo_id!r} is not a local folder, and loading it from the Hub needs huggingface_hub "
            f"(pip install 'jetvit[hub]')"
        ) from e
    try:
        return Path(snapshot_download(repo_id, revision=revision, allow_patterns=["config.json", "model.safetensors"]))
    except Exception as e:  # offline and not cached, no such repo, gated...: say which and what to do
        raise FileNotFoundError(
            f"{repo_id!r} is not a local folder and could not be fetched from the Hugging Face Hub "
            f"({type(e).__name__}: {e}); offline, download it first (hf download {repo_id}) or pass a folder"
        ) from e


def push(
    directory: str | os.PathLike,
    repo_id: str,
    *,
    private: bool = False,
    revision: str | None = None,
    commit_message: str | None = None,
) -> str:
    """Upload a folder written by `jetvit.save` to the Hub repository `repo_id` (created if missing); returns the
    commit's URL. The folder is checked first: a jetvit config and its weights."""
    from jetvit import io

    directory = Path(directory)
    if not io.is_jetvit_dir(directory):
        raise ValueError(f"{str(directory)!r} is not a folder written by jetvit.save (no jetvit config.json)")
    if not (directory / io.WEIGHTS_NAME).is_file():
        raise FileNotFoundError(f"{directory} has a config but no weights: {io.WEIGHTS_NAME} is missing")
    if not HUB_ID.match(repo_id):
        raise ValueError(f"repository {repo_id!r} is not a Hub id of the form 'user/name'")
    from huggingface_hub import HfApi  # missing: the CLI names the extra that installs it (jetvit[hub])

    api = HfApi()
    api.create_repo(repo_id, private=private, exist_ok=True)
    arch = io.read_json(directory / io.CONFIG_NAME, {}).get("arch", "")
    info = api.upload_folder(
        folder_path=str(directory),
        repo_id=repo_id,
        revision=revision,
        commit_message=commit_message or f"jetvit hybrid {arch}",
        allow_patterns=[io.WEIGHTS_NAME, io.CONFIG_NAME, *UPLOADED],
    )
    return str(getattr(info, "commit_url", info))
