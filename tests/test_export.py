"""ONNX export for deployment at any size: one graph for every batch and resolution, equal to PyTorch in
onnxruntime (and OpenVINO where installed) at three resolutions and two batch sizes; fp16 / bf16 graphs with the
linear attention's state in fp32; nothing TensorRT's parser refuses; the caller's model untouched."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import jetvit
from jetvit import ops
from jetvit.cli import main
from jetvit.io import save

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

torch.set_num_threads(1)

# RoPE with registers, windows of 3 (padded at 40x56 and 24x64, exact at 48x48), every attention kind
ROPE = dict(family="dinov3", arch="LWFL", num_registers=4, pos_embed="rope", window_size=3)
# DINOv2's learned position embedding, stored for 4x4 patches: 32x32 keeps it as stored, the others resize it
LEARNED = dict(family="dinov2", arch="LWFL", num_registers=0, pos_embed="learned", img_size=32, window_size=3)
SIZES = {"rope": [(40, 56), (48, 48), (24, 64)]}
BATCHES = (1, 3)


def hybrid(tiny_model, **kw):
    return tiny_model(random_weights=True, **kw)  # the zero-initialised dynamic conv made random too


def ort_outputs(path, x: torch.Tensor) -> list[np.ndarray]:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x.numpy()})


def node_types(path) -> list[str]:
    """Every node's op type in the graph, its functions and every subgraph (an If's branches, a Loop's body)."""
    import onnx

    model = onnx.load(str(path))
    found = []

    def walk(nodes):
        for node in nodes:
            found.append(node.op_type)
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    walk(attr.g.node)
                elif attr.type == onnx.AttributeProto.GRAPHS:
                    for g in attr.graphs:
                        walk(g.node)

    walk(model.graph.node)
    for function in model.functions:
        walk(function.node)
    return found


@pytest.fixture(scope="module")
def rope_graph(tiny_model, tmp_path_factory):
    model = hybrid(tiny_model, **ROPE)
    path = jetvit.export_onnx(model, tmp_path_factory.mktemp("onnx") / "rope.onnx")  # traced at the native 32x32
    return model, path


# ---------------------------------------------------------------------------------------------------------------
# The shape-generic forms, eagerly


def test_bicubic_matrix_equals_interpolate():
    """`ops.bicubic_matrix` against `F.interpolate` along one axis: enlarging and shrinking, by size and by DINOv2's
    scale factor (out + 0.1) / in, with and without antialias."""
    g = torch.Generator().manual_seed(0)
    v = torch.randn(1, 3, 7, 5, generator=g)  # (1, C, in_h, in_w)
    for out in (3, 7, 12, 31):
        for antialias in (False, True):
            got = torch.einsum("hm,bcmn,wn->bchw", ops.bicubic_matrix(out, 7, antialias=antialias), v,
                               ops.bicubic_matrix(out + 1, 5, antialias=antialias))  # fmt: skip
            ref = F.interpolate(v, size=(out, out + 1), mode="bicubic", antialias=antialias)
            torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
        scale = ((out + 0.1) / 7, (out + 1.1) / 5)
        got = torch.einsum("hm,bcmn,wn->bchw", ops.bicubic_matrix(out, 7, out_offset=0.1), v,
                           ops.bicubic_matrix(out + 1, 5, out_offset=0.1))  # fmt: skip
        torch.testing.assert_close(got, F.interpolate(v, scale_factor=scale, mode="bicubic"), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "kw",
    [
        ROPE,
        LEARNED,
        dict(LEARNED, family="dinov2_reg", num_registers=2, pos_interp="hf_antialias"),
        dict(LEARNED, family="vit", pos_interp="hf"),
    ],
    ids=["rope", "official", "hf_antialias", "hf"],
)
def test_export_mode_forward_equals_the_model(tiny_model, kw):
    """The forms the graph is traced in (`ops.export_mode`: padding and masks always, concatenation instead of
    writes into slices, the position resize as matrices) compute the model's forward, eagerly: at the stored size
    (where the learned embedding is kept as stored), shrunk, enlarged and at sizes the window does not divide."""
    model = hybrid(tiny_model, **kw)
    for H, W in [(32, 32), (16, 24), (48, 40), (40, 56)]:
        x = torch.randn(2, 3, H, W, generator=torch.Generator().manual_seed(H + W))
        with torch.no_grad():
            ref = model(x)
            for conv in ops.EXPORT_CONVS:
                with ops.export_mode(conv=conv):
                    got = model(x)
                torch.testing.assert_close(got, ref, atol=2e-5, rtol=1e-5)


# ---------------------------------------------------------------------------------------------------------------
# The dynamic graph in the runtimes


def test_one_graph_for_every_batch_and_size(rope_graph):
    """The graph traced at 32x32, batch 2, in onnxruntime at three sizes (padded windows and not) and two batches."""
    model, path = rope_graph
    g = torch.Generator().manual_seed(5)
    for H, W in SIZES["rope"]:
        for batch in BATCHES:
            x = torch.randn(batch, 3, H, W, generator=g)
            (got,) = ort_outputs(path, x)
            with torch.no_grad():
                ref = model(x).numpy()
            assert got.shape == ref.shape == (batch, model.cfg.num_prefix_tokens + H * W // 64, 32)
            assert np.abs(got - ref).max() <= 1e-4, (batch, H, W)


def test_the_graph_has_what_tensorrt_parses(rope_graph):
    """No `If` or `Loop` (a size-dependent Python branch traced as control flow) and no `ScatterND` (a write into a
    slice of a buffer): the graph's input is (batch, 3, 8*h, 8*w) with all three free."""
    import onnx

    _, path = rope_graph
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)  # types and shapes included
    ops_used = set(node_types(path))
    assert not ops_used & {"If", "Loop", "ScatterND", "ScatterElements"}, ops_used
    assert {"MatMul", "Softmax"} <= ops_used  # the walk sees the graph's nodes
    dims = onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims][1] == 3
    assert all(dims[i].dim_param and not dims[i].dim_value for i in (0, 2, 3)), dims


def assert_runs_like_the_model(path, runtime: str, model, seed: int, **session) -> None:
    """The graph at `path` in `runtime` (`runtime_session(**session)`: fp32, not the bf16 OpenVINO picks on some
    CPUs) equals `model` at the three ROPE sizes and both batches."""
    from jetvit.export import runtime_session

    run = runtime_session(path, runtime, **session)
    g = torch.Generator().manual_seed(seed)
    for H, W in SIZES["rope"]:
        for batch in BATCHES:
            x = torch.randn(batch, 3, H, W, generator=g)
            (got,) = run(x.numpy())
            with torch.no_grad():
                ref = model(x).numpy()
            assert got.shape == ref.shape
            assert np.abs(got - ref).max() <= 1e-4, (runtime, batch, H, W)


def test_onnxruntime_memory_choices_give_the_same_outputs(rope_graph, tiny_model, tmp_path):
    """`runtime_session(memory=)`: each way of holding the intermediates runs the graph exactly, and two "shared"
    sessions of different graphs (one arena between them) run alternately, each as the model it came from."""
    from jetvit.export import runtime_session

    model, path = rope_graph
    for memory in ("own", "shrink", "shared"):
        assert_runs_like_the_model(path, "onnxruntime", model, seed=7, memory=memory)
    teacher = hybrid(tiny_model, **{**ROPE, "arch": "FFFF"}).eval()
    teacher_path = jetvit.export_onnx(teacher, tmp_path / "teacher.onnx")
    runs = [(runtime_session(path, memory="shared"), model), (runtime_session(teacher_path, memory="shared"), teacher)]
    x = torch.randn(2, 3, 48, 32, generator=torch.Generator().manual_seed(8))
    for run, reference in runs + runs:
        with torch.no_grad():
            assert np.abs(run(x.numpy())[0] - reference(x).numpy()).max() <= 1e-4
    with pytest.raises(ValueError, match="memory 'pooled' is not one of own, shared, shrink"):
        runtime_session(path, memory="pooled")


def test_openvino_runs_the_graph(rope_graph):
    pytest.importorskip("openvino")
    model, path = rope_graph
    assert_runs_like_the_model(path, "openvino", model, seed=6)


def test_grouped_conv_graph_runs_everywhere_and_holds_one_conv_per_L_block(rope_graph, tmp_path):
    """`export_onnx(conv="grouped")`: each `L` block's per-image convolution is one `Conv` (groups = channels, a
    block-diagonal kernel built in the graph) where the default graph has none but the patch embedding's; the graph
    stays free in batch and size, equal to PyTorch in onnxruntime and in OpenVINO (compiled per input shape by
    `runtime_session`) at three sizes and two batches, with nothing TensorRT's parser refuses; the metadata says
    which form each graph holds."""
    from jetvit.export import graph_metadata

    model, shifted = rope_graph
    path = jetvit.export_onnx(model, tmp_path / "grouped.onnx", conv="grouped")
    n_linear = model.arch.count("L")
    assert node_types(shifted).count("Conv") == 1  # the patch embedding
    assert node_types(path).count("Conv") == 1 + n_linear
    assert not set(node_types(path)) & {"If", "Loop", "ScatterND", "ScatterElements"}
    meta = graph_metadata(path)
    assert meta["jetvit.conv"] == "grouped" and graph_metadata(shifted)["jetvit.conv"] == "shifted"
    assert meta["jetvit.arch"] == model.arch and meta["jetvit.version"] == jetvit.__version__
    runtimes = ["onnxruntime"]
    try:
        import openvino  # noqa: F401

        runtimes.append("openvino")
    except ImportError:
        pass
    for runtime in runtimes:
        assert_runs_like_the_model(path, runtime, model, seed=7)
    with pytest.raises(ValueError, match="conv 'im2col' is not one of grouped, shifted"):
        jetvit.export_onnx(model, tmp_path / "bad.onnx", conv="im2col")
    assert not (tmp_path / "bad.onnx").exists()


# ---------------------------------------------------------------------------------------------------------------
# Half precision


def tensor_types(path) -> tuple[dict[str, int], list]:
    """The element type of every value in the graph (after ONNX shape inference), and the graph's nodes."""
    import onnx

    model = onnx.shape_inference.infer_shapes(onnx.load(str(path)))
    g = model.graph
    types = {v.name: v.type.tensor_type.elem_type for v in [*g.input, *g.value_info, *g.output]}
    types.update({t.name: t.data_type for t in g.initializer})
    return types, list(g.node)


@pytest.mark.slow  # an export: 30 s
@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_half_precision_graph_keeps_the_linear_state_fp32(tiny_model, tmp_path, dtype):
    import onnx

    model = hybrid(tiny_model, **ROPE)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    path = jetvit.export_onnx(model, tmp_path / f"{dtype}.onnx", dtype=dtype)
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)  # bf16: a valid graph at opset 22

    # the caller's model is untouched: fp32, the same weights, on the same device
    after = model.state_dict()
    assert all(v.dtype == torch.float32 and v.device.type == "cpu" for v in after.values())
    assert all(torch.equal(before[k], after[k]) for k in before)

    # The matmuls run in the half type, but for the linear attention's two (the state phi(K)^T [V, 1] with its
    # normaliser column, and phi(q) against it), which take fp32 operands: 2 per L block, nothing else in fp32.
    half = {"fp16": onnx.TensorProto.FLOAT16, "bf16": onnx.TensorProto.BFLOAT16}[dtype]
    types, nodes = tensor_types(path)
    matmuls = [types.get(n.input[0]) for n in nodes if n.op_type == "MatMul"]
    assert matmuls.count(onnx.TensorProto.FLOAT) == 2 * model.arch.count("L"), matmuls
    assert matmuls.count(half) == len(matmuls) - 2 * model.arch.count("L")
    weights = [t.data_type for t in onnx.load(str(path)).graph.initializer if len(t.dims) == 2]
    assert weights and set(weights) == {half}

    # input and outputs fp32; the result equals fp32 PyTorch to the half type's rounding
    if dtype == "bf16":
        pytest.importorskip("openvino")  # onnxruntime's CPU provider has no bf16 kernels (not even Conv)
        from jetvit.export import runtime_session

        run = runtime_session(path, "openvino")
    else:
        run = lambda x: ort_outputs(path, torch.from_numpy(x))  # noqa: E731
    g = torch.Generator().manual_seed(7)
    for H, W in [(40, 56), (24, 64)]:
        for batch in BATCHES:
            x = torch.randn(batch, 3, H, W, generator=g)
            (got,) = run(x.numpy())
            with torch.no_grad():
                ref = model(x).numpy()
            assert got.dtype == np.float32 and got.shape == ref.shape
            assert np.abs(got - ref).max() <= {"fp16": 0.02, "bf16": 0.05}[dtype] * np.abs(ref).max()


# ---------------------------------------------------------------------------------------------------------------
# The CLI


@pytest.mark.slow  # a second 30 s export; the graph itself is checked in the default run (rope_graph)
def test_cli_exports_a_dynamic_graph_and_checks_it(tiny_model, tmp_path, capsys):
    import onnx

    """DINOv2's learned position embedding, resized in the graph: checked at the stored 32x32 (where it is kept as
    stored), 16x32 (shrunk) and 32x40 (enlarged), batches 1 and 2."""
    model_dir = save(hybrid(tiny_model, **LEARNED), tmp_path / "model")
    out = tmp_path / "m.onnx"
    assert main(["export", "--model", str(model_dir), "--res", "32x32", "--out", str(out)]) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    assert "any B, h, w" in printed[0]
    report = json.loads(printed[-1])
    assert report["ok"] and report["max_abs_error"] <= 1e-4
    checked = {(c["batch"], tuple(c["res"])) for c in report["checks"]}
    assert checked == {(b, r) for b in (1, 2) for r in [(32, 32), (16, 32), (32, 40)]}
    dims = onnx.load(str(out)).graph.input[0].type.tensor_type.shape.dim
    assert all(dims[i].dim_param for i in (0, 2, 3))


@pytest.mark.slow  # an export: 15 s
def test_cli_static_graph_is_fixed(tiny_model, tmp_path, capsys):
    import onnx

    model_dir = save(hybrid(tiny_model, **ROPE), tmp_path / "model")
    out = tmp_path / "m.onnx"
    argv = ["export", "--model", str(model_dir), "--res", "40x56", "--out", str(out), "--static", "--batch", "2",
            "--conv", "grouped"]  # fmt: skip
    assert main(argv) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["ok"] and report["checks"] == [
        {"batch": 2, "res": [40, 56], "max_abs_error": report["max_abs_error"]}
    ]
    dims = onnx.load(str(out)).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims] == [2, 3, 40, 56]
    from jetvit.export import graph_metadata

    assert graph_metadata(out)["jetvit.conv"] == "grouped"


def test_export_rejects_a_size_that_is_not_a_patch_multiple(tiny_model, tmp_path, capsys):
    model_dir = save(hybrid(tiny_model, arch="FWL"), tmp_path / "model")
    assert main(["export", "--model", str(model_dir), "--res", "41x56", "--out", str(tmp_path / "m.onnx")]) == 2
    assert "multiple of the patch size" in capsys.readouterr().err
    assert main(["export", "--model", str(model_dir), "--res", "40x56", "--out", str(tmp_path / "m.onnx"),
                 "--dtype", "fp8"]) == 2  # fmt: skip
    assert "dtype 'fp8' is not one of fp32, fp16, bf16" in capsys.readouterr().err
    assert main(["export", "--model", str(model_dir), "--res", "40x56", "--out", str(tmp_path / "m.onnx"),
                 "--conv", "im2col"]) == 2  # fmt: skip
    assert "conv 'im2col' is not one of grouped, shifted" in capsys.readouterr().err
    model = jetvit.load(model_dir)
    with pytest.raises(ValueError, match="opset 18 cannot hold a bf16 graph"):
        jetvit.export_onnx(model, tmp_path / "m.onnx", dtype="bf16", opset=18)
    with pytest.raises(ValueError, match="2 or more patches a side"):
        jetvit.export_onnx(model, tmp_path / "m.onnx", example_size=(8, 64))
    assert not (tmp_path / "m.onnx").exists()
