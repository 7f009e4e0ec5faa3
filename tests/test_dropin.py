"""Where the hybrid drops in (README's table): each test calls the hybrid the way an existing consumer does.

- the official DINOv2/DINOv3 API (`get_intermediate_layers`, `forward_features`, the attributes heads read), checked
  against jetvit's own `block_features` and inside jetvit's DPT head fed the way DAv2's `DepthAnythingV2.forward`
  feeds it;
- Hugging Face: `model(pixel_values=..., output_hidden_states=True)` against `transformers`' own `Dinov2Model`, and
  `JetViTBackbone` inside `transformers`' own `DepthAnythingForDepthEstimation`;
- timm's `forward_intermediates` / `forward_head` / `num_features` by their documented semantics (timm itself is not
  installed here);
- the Hub: provenance, model card, `jetvit.load("user/name")` from a local Hugging Face cache, offline;
- loading without jetvit: `AutoModel.from_pretrained(dir, trust_remote_code=True)` with `import jetvit` blocked;
- packaging: the wheel's metadata (SPDX licence, licence file, the one version).
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import http.server
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
import torch

import jetvit
from jetvit import adapters, hub
from jetvit.adapters import JetViTBackbone

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def model(tiny_model):
    """Every kind, one register, random weights (the L blocks' convolutions included)."""
    return tiny_model("LWFL", random_weights=True)


@pytest.fixture(scope="module")
def x() -> torch.Tensor:
    return torch.randn(2, 3, 32, 48, generator=torch.Generator().manual_seed(0))  # a 4x6 patch grid


# ---------------------------------------------------------------------------------------------------------------
# Official DINOv2 / DINOv3


def test_official_attributes(model) -> None:
    assert (model.embed_dim, model.num_features, model.patch_size, model.n_blocks) == (32, 32, 8, 4)
    assert model.n_storage_tokens == model.num_register_tokens == 1


@torch.no_grad()
def test_get_intermediate_layers_official_semantics(model, x) -> None:
    B, (h, w) = x.shape[0], model.grid_size(*x.shape[-2:])
    last2 = model.get_intermediate_layers(x, 2)  # an int: the last n blocks
    ref = model.block_features(x, [2, 3])
    assert isinstance(last2, tuple) and len(last2) == 2
    for got, (patches, _) in zip(last2, ref):
        assert got.shape == (B, h * w, 32)
        torch.testing.assert_close(got, patches.flatten(2).transpose(1, 2), rtol=0, atol=0)
    # a list: those blocks, in block order (the official loop appends as it meets them); DINOv3's extra tokens
    out = model.get_intermediate_layers(
        x, n=[3, 0], reshape=True, return_class_token=True, return_extra_tokens=True, norm=True
    )
    for (patches, cls, extra), (rp, rg) in zip(out, model.block_features(x, [0, 3])):
        assert patches.shape == (B, 32, h, w) and cls.shape == (B, 32) and extra.shape == (B, 1, 32)
        torch.testing.assert_close(patches, rp, rtol=0, atol=0)
        torch.testing.assert_close(cls, rg[:, 0], rtol=0, atol=0)
        torch.testing.assert_close(extra, rg[:, 1:2], rtol=0, atol=0)
    # norm=False: the blocks' raw outputs
    (raw,) = model.get_intermediate_layers(x, [-1], reshape=True, norm=False)
    torch.testing.assert_close(raw, model.block_features(x, [3], norm=False)[0][0], rtol=0, atol=0)
    assert not torch.allclose(raw, ref[1][0])
    for bad in (0, 5, [4]):
        with pytest.raises(ValueError, match="4-block"):
            model.get_intermediate_layers(x, bad)


@torch.no_grad()
def test_forward_features_official_dict(model, tiny_yolos, x) -> None:
    feats = model.forward_features(x)
    tokens = model(x)  # (B, 1 + 1 + 24, D)
    assert set(feats) == {
        "x_norm_clstoken", "x_storage_tokens", "x_norm_regtokens", "x_norm_patchtokens", "x_prenorm", "masks",
    }  # fmt: skip
    torch.testing.assert_close(feats["x_norm_clstoken"], tokens[:, 0], rtol=0, atol=0)
    torch.testing.assert_close(feats["x_storage_tokens"], tokens[:, 1:2], rtol=0, atol=0)
    torch.testing.assert_close(feats["x_norm_regtokens"], tokens[:, 1:2], rtol=0, atol=0)
    torch.testing.assert_close(feats["x_norm_patchtokens"], tokens[:, 2:], rtol=0, atol=0)
    torch.testing.assert_close(feats["x_prenorm"], model.forward_hidden_states(x)[-1], rtol=0, atol=0)
    assert feats["masks"] is None
    with pytest.raises(ValueError, match="masks"):
        model.forward_features(x, masks=torch.zeros(2, 24, dtype=torch.bool))
    # YOLOS: the detection tokens (after the patches) are not patch tokens
    yolos = tiny_yolos()
    xy = torch.randn(1, 3, 32, 48)
    yf, yt = yolos.forward_features(xy), yolos(xy)
    torch.testing.assert_close(yf["x_norm_patchtokens"], yt[:, 1:25], rtol=0, atol=0)


@pytest.mark.parametrize("use_clstoken", [False, True])
@torch.no_grad()
def test_dpt_head_fed_by_get_intermediate_layers_as_dav2(tiny_depth_model, use_clstoken: bool) -> None:
    """The consumer: DAv2's `DepthAnythingV2.forward` calls `get_intermediate_layers(x, layers,
    return_class_token=True)` and its DPT head reshapes each (tokens, cls) to the patch grid; here that head is
    jetvit's DPT head (the same weights layout), and the depth must be the hybrid's own `predict_depth`."""
    model = tiny_depth_model(head={"use_clstoken": use_clstoken}, arch="LWFL")
    x = torch.randn(2, 3, 32, 48)
    patch_h, patch_w = x.shape[-2] // model.patch_size, x.shape[-1] // model.patch_size
    features = model.get_intermediate_layers(x, model.depth_head.cfg.layers, return_class_token=True)
    # DAv2's DPTHead: x[0] tokens (B, h*w, D) -> (B, D, h, w); x[1] the CLS token (B, D) for the readout
    feats = [(t.permute(0, 2, 1).reshape(t.shape[0], t.shape[-1], patch_h, patch_w), c[:, None]) for t, c in features]
    depth = model.depth_head(feats, (patch_h * model.patch_size, patch_w * model.patch_size))
    torch.testing.assert_close(depth, model.predict_depth(x), rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------------------------------------------------------
# Hugging Face


@torch.no_grad()
def test_hf_call_style_matches_transformers_dinov2(hf_dinov2, tmp_path: Path) -> None:
    """The same call on `transformers`' Dinov2Model and on the converted teacher (then a hybrid: same contract)."""
    from transformers.modeling_outputs import BaseModelOutputWithPooling

    hf = hf_dinov2()
    hf.save_pretrained(tmp_path / "hf")
    teacher = jetvit.load_teacher(tmp_path / "hf")
    x = torch.randn(2, 3, 70, 98)
    ref = hf(pixel_values=x, output_hidden_states=True, return_dict=True)
    out = teacher(pixel_values=x, output_hidden_states=True, return_dict=True)
    assert isinstance(out, BaseModelOutputWithPooling)
    torch.testing.assert_close(out.last_hidden_state, ref.last_hidden_state, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out.pooler_output, ref.pooler_output, rtol=1e-4, atol=1e-5)
    assert len(out.hidden_states) == len(ref.hidden_states) == 3
    for a, b in zip(out.hidden_states, ref.hidden_states):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    hybrid = jetvit.convert(teacher, "LW")
    tup = hybrid(x, output_hidden_states=False, return_dict=False)
    torch.testing.assert_close(tup[0], hybrid(x), rtol=0, atol=0)  # model(x): jetvit's tokens, unchanged
    torch.testing.assert_close(tup[1], hybrid(x)[:, 0], rtol=0, atol=0)
    assert len(tup) == 2
    with pytest.raises(TypeError, match="head_mask"):
        hybrid(pixel_values=x, head_mask=None)
    with pytest.raises(ValueError, match="output_attentions"):
        hybrid(pixel_values=x, output_attentions=True)
    with pytest.raises(ValueError, match="once"):
        hybrid(x, pixel_values=x)


@torch.no_grad()
def test_hf_output_without_transformers(model, x, monkeypatch) -> None:
    monkeypatch.setattr(adapters, "_has_transformers", lambda: False)
    out = model(pixel_values=x, output_hidden_states=True)
    assert isinstance(out, adapters.HFOutput)
    torch.testing.assert_close(out.last_hidden_state, model(x), rtol=0, atol=0)
    torch.testing.assert_close(out["pooler_output"], model(x)[:, 0], rtol=0, atol=0)
    assert len(out.hidden_states) == 5 and len(out.to_tuple()) == 3


@torch.no_grad()
def test_hf_backbone_inside_depth_anything(hf_depth_anything, tmp_path: Path) -> None:
    """`transformers`' own DepthAnythingForDepthEstimation with its backbone replaced by a converted hybrid (every
    backbone tensor perturbed, the L blocks' convolutions included): its neck and head read `JetViTBackbone`'s
    feature maps, and the depth is the hybrid's `predict_depth` (whose DPT head holds the same weights)."""
    hf = hf_depth_anything()
    hf.save_pretrained(tmp_path / "hf")
    student = jetvit.convert(jetvit.load_teacher(tmp_path / "hf"), "LWFL")
    g = torch.Generator().manual_seed(1)
    for name, p in student.named_parameters():
        if not name.startswith("depth_head."):
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    hf.backbone = JetViTBackbone(student, out_indices=hf.config.backbone_config.out_indices)
    x = torch.randn(2, 3, 70, 98)
    out = hf(pixel_values=x, output_hidden_states=True)
    ref = student.predict_depth(x)
    err = ((out.predicted_depth - ref).abs().max() / ref.abs().max()).item()
    assert err < 1e-5, f"depth relative error {err}"
    assert len(out.hidden_states) == 5
    # the reshaped layout: the patch grid of the blocks the stages name (stage i = block i - 1)
    maps = JetViTBackbone(student, out_indices=[2, -1], reshape_hidden_states=True)(x).feature_maps
    for got, (patches, _) in zip(maps, student.block_features(x, [1, 3])):
        torch.testing.assert_close(got, patches, rtol=0, atol=0)
    with pytest.raises(ValueError, match="out_indices"):
        JetViTBackbone(student, out_indices=[5])


# ---------------------------------------------------------------------------------------------------------------
# timm


@torch.no_grad()
def test_timm_forward_intermediates_contract(model, x) -> None:
    B, (h, w) = x.shape[0], model.grid_size(*x.shape[-2:])
    final, inter = model.forward_intermediates(x, [3, 1])  # timm: (final, intermediates), in block order
    torch.testing.assert_close(final, model(x), rtol=0, atol=0)
    ref = model.block_features(x, [1, 3], norm=False)  # timm's default: norm=False
    assert len(inter) == 2
    for got, (patches, _) in zip(inter, ref):
        assert got.shape == (B, 32, h, w)
        torch.testing.assert_close(got, patches, rtol=0, atol=0)
    # an int: the last n; None: every block; NLC; prefix tokens; the final norm
    assert len(model.forward_intermediates(x, 3)[1]) == 3 and len(model.forward_intermediates(x)[1]) == 4
    nlc = model.forward_intermediates(x, [-1], output_fmt="NLC", norm=True, return_prefix_tokens=True)[1]
    (patches, prefix), (rp, rg) = nlc[0], model.block_features(x, [3])[0]
    torch.testing.assert_close(patches, rp.flatten(2).transpose(1, 2), rtol=0, atol=0)
    torch.testing.assert_close(prefix, rg, rtol=0, atol=0)
    only = model.forward_intermediates(x, [1], intermediates_only=True)
    assert isinstance(only, list) and len(only) == 1
    torch.testing.assert_close(only[0], ref[0][0], rtol=0, atol=0)
    early, _ = model.forward_intermediates(x, [1], stop_early=True)
    torch.testing.assert_close(early, model.norm(model.forward_hidden_states(x)[2]), rtol=0, atol=0)
    with pytest.raises(ValueError, match="output_fmt"):
        model.forward_intermediates(x, [1], output_fmt="NHWC")


@torch.no_grad()
def test_timm_forward_head(model, x) -> None:
    cls = model(x)[:, 0]
    torch.testing.assert_close(model.forward_head(model.forward_features(x)), cls, rtol=0, atol=0)
    torch.testing.assert_close(model.forward_head(model(x), pre_logits=True), cls, rtol=0, atol=0)
    assert model.forward_head(model(x)).shape == (2, model.num_features)


# ---------------------------------------------------------------------------------------------------------------
# Provenance, model card, the Hub


def test_teacher_licences() -> None:
    cases = {
        "facebook/dinov3-vits16-pretrain-lvd1689m": "DINOv3 License",
        "dinov3_vitl16_pretrain_lvd1689m-8aa4cbdd.pth": "DINOv3 License",
        "facebook/dinov2-small": "Apache-2.0",
        "depth-anything/Depth-Anything-V2-Small-hf": "Apache-2.0",
        "checkpoints/depth_anything_v2_vits.pth": "Apache-2.0",
        "depth-anything/Depth-Anything-V2-Large-hf": "CC-BY-NC-4.0",
        "depth_anything_v2_vitb.pth": "CC-BY-NC-4.0",
    }
    for src, licence in cases.items():
        assert hub.teacher_licence(src)["name"] == licence, src
    assert hub.teacher_licence("builtin")["name"] == "Apache-2.0"  # jetvit's own built-in teacher
    assert hub.teacher_licence("google/vit-base-patch16-224") is None


def test_save_records_provenance_and_card(model, tiny_teacher_dir: Path, tmp_path: Path) -> None:
    summary = {
        "teacher": str(tiny_teacher_dir), "arch": model.arch, "scorer": "feature_cosine", "teacher_score": 1.0,
        "final_score": 0.875, "flops_resolution": [64, 64], "teacher_flops": 2.0e9, "flops": 1.0e9,
        "data": "the skimage sample photos", "holdout": 4, "command": "jetvit search --config c.yaml --out run",
        "speedups": [{"device": "AMD EPYC (2 cores)", "resolution": "1024x1024", "speedup": 1.9}],
    }  # fmt: skip
    out = jetvit.save(model, tmp_path / "m", teacher=str(tiny_teacher_dir), card=summary)
    meta = json.loads((out / "config.json").read_text())
    prov = meta["provenance"]
    assert prov["jetvit_version"] == jetvit.__version__
    expected = hashlib.sha256((tiny_teacher_dir / "model.safetensors").read_bytes()).hexdigest()
    assert prov["teacher"] == {"id": str(tiny_teacher_dir), "sha256": expected, "license": None}
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True)
    if head.returncode == 0:  # a checkout: its commit, '+dirty' when jetvit's files differ from it
        assert prov["jetvit_commit"].split("+")[0] == head.stdout.strip()
    card = (out / "README.md").read_text()
    for text in (model.arch, expected, "0.875", "1.90x", "AMD EPYC", "2.00x fewer", summary["command"], "`L`: ReLU",
                 "4 held-out images of the skimage sample photos", "| teacher | 1 |"):  # fmt: skip
        assert text in card, text
    assert jetvit.load(out).arch == model.arch  # the extra keys do not disturb jetvit's strict loading
    # a student of a student keeps the first teacher's licence
    dinov3 = dict(prov["teacher"], id="facebook/dinov3-vits16-pretrain-lvd1689m")
    dinov3["license"] = hub.teacher_licence(dinov3["id"])
    meta["provenance"]["teacher"] = dinov3
    (out / "config.json").write_text(json.dumps(meta))
    second = hub.teacher_provenance(str(out))
    assert second["license"]["name"] == "DINOv3 License"
    assert "license: other" in hub.model_card({**meta, "provenance": {"teacher": second}}, {})


def test_source_commit_only_from_a_checkout_tracking_jetvit(tmp_path: Path) -> None:
    """jetvit copied (as an install would) into another project's git repository, untracked: no commit of that
    repository is recorded as jetvit's."""
    shutil.copytree(REPO / "jetvit", tmp_path / "jetvit", ignore=shutil.ignore_patterns("assets", "__pycache__"))
    env = {**os.environ, "GIT_CONFIG_GLOBAL": os.devnull}
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-C", str(tmp_path)]
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True, env=env)
    (tmp_path / "other.txt").write_text("another project\n")
    subprocess.run([*git, "add", "other.txt"], check=True, env=env)
    subprocess.run([*git, "commit", "-q", "-m", "x"], check=True, env=env)
    code = "import jetvit.hub as h; print(h.source_commit())"
    run = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True)
    assert run.stdout.strip() == "None"
    subprocess.run([*git, "add", "jetvit"], check=True, env=env)  # now tracked: that commit (+dirty once edited)
    subprocess.run([*git, "commit", "-q", "-m", "y"], check=True, env=env)
    head = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    run = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True)
    assert run.stdout.strip() == head


def _hub_cache(cache: Path, repo_id: str, folder: Path) -> None:
    """The Hugging Face cache layout of one snapshot of `repo_id` holding `folder`'s files."""
    commit = hashlib.sha1(repo_id.encode()).hexdigest()
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    shutil.copytree(folder, repo / "snapshots" / commit)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)


@torch.no_grad()
def test_load_hub_id_offline_from_cache(model, x, tmp_path: Path, monkeypatch) -> None:
    import huggingface_hub.constants as constants

    _hub_cache(tmp_path / "cache", "user/tiny-hybrid", jetvit.save(model, tmp_path / "m"))
    for name, value in (("HF_HUB_CACHE", str(tmp_path / "cache")), ("HF_HUB_OFFLINE", True)):
        monkeypatch.setenv(name, str(value) if name == "HF_HUB_CACHE" else "1")
        monkeypatch.setattr(constants, name, value)  # read at import: the process's view of the same variables
    loaded = jetvit.load("user/tiny-hybrid")
    assert loaded.arch == model.arch
    torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
    with pytest.raises(FileNotFoundError, match="user/not-cached"):
        jetvit.load("user/not-cached")


def test_push_checks_before_uploading(model, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="not a folder written by jetvit.save"):
        hub.push(tmp_path / "empty", "user/name")
    with pytest.raises(ValueError, match="not a Hub id"):
        hub.push(jetvit.save(model, tmp_path / "m"), "no-slash")


class _HubStandIn(http.server.BaseHTTPRequestHandler):
    """The Hub's HTTP API as far as `huggingface_hub`'s create_repo and upload_folder use it: every file is accepted
    as a regular (non-LFS) file; what each commit carried is kept in `commits`, any other request in `unknown`."""

    commits: list[dict] = []
    unknown: list[str] = []

    def log_message(self, *args) -> None:
        pass

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            data = b""
            while True:
                size = int(self.rfile.readline().strip(), 16)
                chunk = self.rfile.read(size + 2)[:size]  # the chunk and its CRLF
                if not size:
                    return data
                data += chunk
        data = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        return gzip.decompress(data) if self.headers.get("Content-Encoding") == "gzip" else data

    def _answer(self, obj: dict, status: int = 200) -> None:
        payload = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def do_POST(self) -> None:
        body, path = self._body(), self.path.split("?")[0]
        endpoint = f"http://{self.headers['Host']}"
        if path == "/api/repos/create":
            name = json.loads(body)
            self._answer({"url": f"{endpoint}/{name.get('organization') or 'user'}/{name['name']}"})
        elif path == "/api/validate-yaml":
            self._answer({"errors": [], "warnings": []})
        elif "/preupload/" in path:
            files = json.loads(body)["files"]
            self._answer(
                {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]}
            )
        elif "/commit/" in path:
            lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
            files = {v["value"]["path"]: base64.b64decode(v["value"]["content"]) for v in lines if v["key"] == "file"}
            type(self).commits.append({"path": path, "header": lines[0]["value"], "files": files})
            self._answer({"commitUrl": f"{endpoint}/user/tiny/commit/{'a' * 40}", "commitOid": "a" * 40})
        else:
            type(self).unknown.append(f"POST {path}")
            self._answer({"error": "not in the stand-in"}, 404)

    def do_GET(self) -> None:
        if self.path.split("?")[0] != "/api/agent-harnesses":  # huggingface_hub's optional user-agent registry
            type(self).unknown.append(f"GET {self.path}")
        self._answer({"error": "not in the stand-in"}, 404)


def test_push_uploads_the_folder_to_a_hub_stand_in(model, tmp_path: Path, monkeypatch, capsys) -> None:
    """`jetvit push` (the CLI) against a local stand-in of the Hub's HTTP API: the repository is created and one
    commit carries every file of the folder, byte for byte. (The stand-in answers what huggingface_hub asks today;
    the real Hub's LFS/Xet path for large files is not exercised.)"""
    import huggingface_hub.constants as constants

    from jetvit.cli import main

    folder = jetvit.save(model, tmp_path / "m", card={"arch": model.arch})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _HubStandIn)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    _HubStandIn.commits, _HubStandIn.unknown = [], []
    try:
        monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{server.server_address[1]}")
        monkeypatch.setattr(constants, "AGENT_HARNESSES_PATH", str(tmp_path / "harnesses.json"), raising=False)
        monkeypatch.setenv("HF_TOKEN", "hf_standin")
        assert main(["push", str(folder), "user/tiny", "--message", "first"]) == 0
    finally:
        server.shutdown()
    assert not _HubStandIn.unknown, _HubStandIn.unknown
    (commit,) = _HubStandIn.commits
    assert commit["path"] == "/api/models/user/tiny/commit/main" and commit["header"]["summary"] == "first"
    assert commit["files"] == {p.name: p.read_bytes() for p in folder.iterdir()}
    assert "user/tiny/commit/" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------------------------
# Loading without jetvit


BLOCKED_LOAD = """
import json, sys
class NoJetvit:  # `import jetvit` fails, as where it is not installed
    def find_spec(self, name, path=None, target=None):
        if name == "jetvit" or name.startswith("jetvit."):
            raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)")
sys.meta_path.insert(0, NoJetvit())
import torch
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModel
folder, io = sys.argv[1], load_file(sys.argv[2])
config = AutoConfig.from_pretrained(folder, trust_remote_code=True)
model = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
with torch.no_grad():
    out = model(pixel_values=io["x"], output_hidden_states=True)
print(json.dumps({
    "arch": config.arch, "class": type(model).__name__,
    "err": (out.last_hidden_state - io["tokens"]).abs().max().item(),
    "pool_err": (out.pooler_output - io["tokens"][:, 0]).abs().max().item(),
    "hidden": len(out.hidden_states),
    "jetvit_imported": any(m == "jetvit" or m.startswith("jetvit.") for m in sys.modules),
}))
"""


@torch.no_grad()
def test_automodel_loads_without_jetvit(model, x, tmp_path: Path) -> None:
    from safetensors.torch import save_file

    folder = jetvit.save(model, tmp_path / "m")
    save_file({"x": x.contiguous(), "tokens": model(x).contiguous()}, str(tmp_path / "io.safetensors"))
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules"), "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""}
    run = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(BLOCKED_LOAD), str(folder), str(tmp_path / "io.safetensors")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    res = json.loads(run.stdout.strip().splitlines()[-1])
    assert res["class"] == "JetViTModel" and res["arch"] == model.arch and not res["jetvit_imported"]
    assert res["err"] < 1e-5 and res["pool_err"] < 1e-5 and res["hidden"] == 5


def test_remote_code_is_the_package_code() -> None:
    """The bundle is generated from the package's files (no second copy to drift): every class and function of the
    model file is in it, and it compiles."""
    files = hub.remote_code()
    code = files[hub.MODELING_NAME]
    compile(code, hub.MODELING_NAME, "exec")
    for name in ("class HybridViT(BackboneAPI, nn.Module)", "class LinearAttention", "def window_attention",
                 "class DPTHead", "def get_intermediate_layers", "class JetViTModel(PreTrainedModel)"):  # fmt: skip
        assert name in code, name
    # no line imports jetvit (what transformers' check_imports looks for before running remote code)
    assert not re.findall(r"^\s*(?:import|from)\s+jetvit\b", code, flags=re.M)


# ---------------------------------------------------------------------------------------------------------------
# Packaging


def test_wheel_metadata_spdx_licence_and_one_version(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(REPO / name, src / name)
    shutil.copytree(REPO / "jetvit", src / "jetvit", ignore=shutil.ignore_patterns("assets", "__pycache__"))
    (tmp_path / "meta").mkdir()
    code = "import sys, setuptools.build_meta as b; print(b.prepare_metadata_for_build_wheel(sys.argv[1]))"
    run = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "meta")], cwd=src, capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stderr[-3000:]
    meta = (tmp_path / "meta" / run.stdout.strip().splitlines()[-1] / "METADATA").read_text()
    assert "License-Expression: Apache-2.0" in meta
    assert "License-File: LICENSE" in meta
    assert f"Version: {jetvit.__version__}\n" in meta
    assert (
        "Apache License" in (REPO / "LICENSE").read_text()
        and "Version 2.0, January 2004" in (REPO / "LICENSE").read_text()
    )


def test_preprocessor_config_normalises_as_the_model(model, tmp_path: Path) -> None:
    """`AutoImageProcessor` on the saved folder gives the input `model.normalize` gives (at the native size)."""
    transformers = pytest.importorskip("transformers")
    import numpy as np

    folder = jetvit.save(model, tmp_path / "m")
    processor = transformers.AutoImageProcessor.from_pretrained(folder)
    image = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)  # the native 32 px
    got = processor(images=image, return_tensors="pt")["pixel_values"]
    ref = model.normalize(torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
