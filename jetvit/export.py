"""ONNX export of a hybrid for deployment at any batch and resolution, checked against PyTorch in onnxruntime or
OpenVINO (CPU).

One graph takes every batch size and every resolution whose sides are multiples of the patch size. It is traced by
`torch.export` with symbolic sizes (`torch.onnx.export(dynamo=True, dynamic_shapes=...)`) while the ops run in their
shape-generic forms (`jetvit.ops.export_mode`): the RoPE tables, the learned position embeddings' bicubic resize
(two interpolation matrices), the windows' padding and key mask are computed in the graph from the input's size, and
nothing is written into slices of a buffer. The graph therefore has no `ScatterND`, `If` or `Loop` node, which
TensorRT's parser needs (docs/DEPLOY.md has the TensorRT and OpenVINO recipes). `dynamic=False` fixes the batch
and the size instead.

Precision: `dtype="fp16"` or `"bf16"` stores the weights and computes in that type, except the linear attention's
state and normaliser, which explicit casts keep in fp32 (a sum over every token overflows fp16 and loses digits in
bf16). The graph's input and outputs are fp32 whatever `dtype`.

Outputs: `tokens`, the final normed tokens in the teacher's order (`model(x)`); a model with YOLOS's detection heads
adds `logits` (B, S, num_labels + 1) and `boxes` (B, S, 4) sigmoid (cx, cy, w, h) (`model.predict_detections(x)`),
so the file is a detector on its own (postprocessing, `jetvit.tasks.detection.postprocess`, stays outside).

The caller's model is never changed: the export converts and traces a copy.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from jetvit import __version__, ops
from jetvit.model import HybridViT

DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
RUNTIMES = ("onnxruntime", "openvino")
# How an onnxruntime session holds its intermediate tensors (`runtime_session(memory=)`).
ORT_MEMORY = ("own", "shared", "shrink")
# ONNX opset of each dtype's graph: 18 (what the exporter targets natively), but bf16 needs 22, the first opset whose
# Conv (the patch embedding) and a few other ops accept bfloat16; an opset-18 bf16 graph is not a valid ONNX model.
DEFAULT_OPSET = {"fp32": 18, "fp16": 18, "bf16": 22}
# The largest accepted |runtime - PyTorch (fp32)| of the check: absolute for fp32 graphs; for fp16 and bf16, a
# fraction of the largest |PyTorch| output (their rounding scales with the values).
DEFAULT_TOLERANCE = {"fp32": 1e-4, "fp16": 0.02, "bf16": 0.05}


def output_names(model: HybridViT) -> list[str]:
    """The exported graph's outputs: the tokens, plus YOLOS's class logits and boxes when the model has the heads."""
    return ["tokens", "logits", "boxes"] if model.detection_head is not None else ["tokens"]


class DeployGraph(nn.Module):
    """What `export_onnx` traces: `model` (already in `dtype`) between fp32 images and fp32 outputs.

    forward: images (B, C, H, W) -> final normed tokens (B, G + h*w, D) in the teacher's order, equal to `model(x)`;
    with YOLOS's detection heads (tokens, class logits (B, S, C), boxes (B, S, 4)), the last two equal to
    `model.predict_detections(x)`.
    """

    def __init__(self, model: HybridViT, dtype: torch.dtype) -> None:
        super().__init__()
        self.model, self.dtype = model, dtype

    def forward(self, images: Tensor) -> Tensor | tuple[Tensor, Tensor, Tensor]:
        m = self.model
        tokens = m(images.to(self.dtype))
        if m.detection_head is None:
            return tokens.float()
        logits, boxes = m.detection_head(tokens[:, -m.cfg.num_detection_tokens :])  # the detection tokens, last
        return tokens.float(), logits.float(), boxes.float()


def default_example_size(model: HybridViT) -> tuple[int, int]:
    """The native resolution (the learned position grid's, else `img_size` square): what the teacher was trained at."""
    p = model.cfg.patch_size
    if model.pos_embed is not None:
        h, w = model.cfg.learned_grid
        return h * p, w * p
    side = max(2, model.cfg.img_size // p) * p
    return side, side


def parse_dtype(dtype: str) -> torch.dtype:
    if dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    return DTYPES[dtype]


def export_onnx(
    model: HybridViT,
    path: str | Path,
    *,
    dtype: str = "fp32",
    dynamic: bool = True,
    example_size: tuple[int, int] | None = None,
    batch: int = 1,
    opset: int | None = None,
    conv: str = "shifted",
) -> Path:
    """Write `model` as an ONNX graph to `path`; returns the path.

    dtype: "fp32", "fp16" or "bf16" (the weights and the arithmetic; the linear attention's state and normaliser
    stay fp32; input and outputs are fp32). dynamic: the graph takes any batch and any H x W that are multiples of
    the patch size (input `images` of shape (batch, C, p*h, p*w)); otherwise it is fixed to `batch` x `example_size`.
    example_size: the (H, W) traced, by default the native resolution; in a dynamic graph at least 2 patches a side,
    since `torch.export` fixes a size of 1 as a constant. opset: ONNX opset, by default `DEFAULT_OPSET[dtype]` (18;
    22 for bf16, which opset 18 does not allow in a convolution).

    conv: the form of the `L` blocks' per-image convolution. `shifted` (the default, `ops.shifted_depthwise_conv`):
    k*k shifted multiply-adds, pointwise ops that every runtime takes at any shape (onnxruntime, OpenVINO, TensorRT).
    `grouped` (`ops.block_diagonal_depthwise_conv`): one `Conv` with groups = channels and a block-diagonal kernel
    computed in the graph (at batch 1 a plain depthwise convolution, at batch B B times its work), several times
    faster in onnxruntime; OpenVINO runs it only at a fixed shape (`runtime_session` compiles one per input shape),
    and TensorRT is untested with it. The form is recorded in the graph's metadata (`jetvit.conv`), with the jetvit
    version and the architecture.

    The file appears whole or not at all (`jetvit.io.atomic_write_files`, with the `<name>.data` weights ONNX writes
    beside a model over 2 GB): an export killed or out of disk space leaves `path` as it was."""
    from jetvit.io import atomic_write_files, remove_stale_temporaries

    torch_dtype = parse_dtype(dtype)
    opset = DEFAULT_OPSET[dtype] if opset is None else opset
    if opset < DEFAULT_OPSET[dtype]:  # bf16
        raise ValueError(f"opset {opset} cannot hold a {dtype} graph (Conv takes bfloat16 from opset 22 on); use >= 22")
    H, W = example_size if example_size is not None else default_example_size(model)
    h, w = model.grid_size(H, W)  # a ValueError for sizes that are not multiples of the patch
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    if conv not in ops.EXPORT_CONVS:
        raise ValueError(f"conv {conv!r} is not one of {', '.join(ops.EXPORT_CONVS)}")
    if dynamic and min(h, w) < 2:
        raise ValueError(
            f"example_size {H}x{W} is {h}x{w} patches; a dynamic graph is traced at 2 or more patches a side "
            f"(a size of 1 would be fixed in the graph), e.g. {2 * model.cfg.patch_size}x{2 * model.cfg.patch_size}"
        )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path.parent, recursive=False, name=path.name)  # of an earlier export that was killed
    graph = DeployGraph(copy.deepcopy(model).to(device="cpu", dtype=torch_dtype).eval(), torch_dtype).eval()
    dynamic_shapes = None
    if dynamic:
        p = model.cfg.patch_size
        Dim = torch.export.Dim
        # The sides are p times a free patch count, so that the graph knows they divide exactly; batch 2 is traced
        # because a traced size of 1 would be specialised.
        batch = 2
        dynamic_shapes = ({0: Dim("batch", min=1), 2: p * Dim("patches_h", min=1), 3: p * Dim("patches_w", min=1)},)
    x = torch.randn(batch, model.cfg.in_chans, H, W)
    with torch.no_grad(), ops.export_mode(conv=conv):
        program = torch.onnx.export(
            graph,
            (x,),
            dynamo=True,
            opset_version=opset,
            input_names=["images"],
            output_names=output_names(model),
            dynamic_shapes=dynamic_shapes,
            verbose=False,
        )
    program.model.metadata_props.update(
        {"jetvit.version": __version__, "jetvit.arch": model.arch, "jetvit.conv": conv, "jetvit.dtype": dtype}
    )
    atomic_write_files(path, program.save)
    return path


def graph_metadata(path: str | Path) -> dict[str, str]:
    """The metadata an exported graph carries (`export_onnx`): jetvit.version, jetvit.arch, jetvit.conv,
    jetvit.dtype; empty for a graph written otherwise. Reads the graph's structure only, not the weights."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in model.metadata_props}


# ---------------------------------------------------------------------------------------------------------------
# Running and checking an exported graph


@functools.cache  # once per process
def register_shared_arena() -> None:
    """Register, once per process, the CPU arena that onnxruntime sessions with `memory="shared"` use
    (`runtime_session`). It grows by what each allocation asks for (not to the next power of two), so that its
    size stays near the largest run's."""
    import onnxruntime as ort

    info = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
    same_as_requested = 1  # onnxruntime's ArenaExtendStrategy
    ort.create_and_register_allocator(info, ort.OrtArenaCfg(0, same_as_requested, -1, -1))


def runtime_session(
    path: str | Path,
    runtime: str = "onnxruntime",
    *,
    threads: int | None = None,
    precision: str = "f32",
    memory: str = "own",
    shape: Sequence[int] | None = None,
) -> Callable[[Any], list[Any]]:
    """The graph at `path` loaded in `runtime` ("onnxruntime" or "openvino") on the CPU: a function from images
    (numpy, (B, C, H, W) fp32) to the list of outputs (numpy), in `output_names` order.

    threads: intra-op threads (None: the runtime's default). precision: OpenVINO's `INFERENCE_PRECISION_HINT`, "f32"
    by default, since OpenVINO otherwise computes in bf16 on CPUs that have it ("bf16" to allow that).

    memory (onnxruntime; one of `ORT_MEMORY`): where a session's intermediate tensors live. "own" (onnxruntime's
    default): the session's own arena, which keeps the most a run ever needed (a full-attention block's scores at
    2048x2048 alone are 6 GiB) and, after the first run at a shape, one planned block per input shape on top of it.
    "shared": one arena for every "shared" session of this process (registered on first use), allocating per tensor
    without the planned blocks, so that sessions run one after another hold one largest run's memory, not one each;
    at 2048x2048 a DINOv3-S teacher and its hybrid fit in 19 GB together, where one "own" session went past 23 GB
    by its second run. "shrink": the session's own arena, given back after every run and so allocated (and its
    pages faulted) again in the next, a fixed cost per run of seconds at 2048x2048. Turning the arena off made the
    hybrid's many intermediate tensors 20% slower at 1024x1024 on this machine's CPU.

    shape: OpenVINO only, the graph reshaped to this one
    input shape (B, C, H, W) before it is compiled (often faster than dynamic shapes); a `grouped` graph
    (`export_onnx(conv=)`) is compiled for each input shape it meets anyway."""
    if runtime == "onnxruntime":
        import onnxruntime as ort

        if memory not in ORT_MEMORY:
            raise ValueError(f"memory {memory!r} is not one of {', '.join(ORT_MEMORY)}")
        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        if memory == "shared":
            register_shared_arena()
            options.add_session_config_entry("session.use_env_allocators", "1")
            # A planned block per input shape would be allocated beside the arena's free chunks, not from them.
            options.enable_mem_pattern = False
        sess = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        name = sess.get_inputs()[0].name
        run_options = None
        if memory == "shrink":
            run_options = ort.RunOptions()
            run_options.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
        return lambda x: sess.run(None, {name: x}, run_options)
    if runtime == "openvino":
        import openvino as ov

        config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": precision}
        if threads is not None:
            config["INFERENCE_NUM_THREADS"] = threads
        core = ov.Core()
        if shape is None and graph_metadata(path).get("jetvit.conv") != "grouped":
            compiled = core.compile_model(str(path), "CPU", config)
            return lambda x: list(compiled(x).to_tuple())
        # At a fixed shape: OpenVINO's CPU plugin cannot run a grouped convolution whose kernel shape is unknown
        # until run time (the `grouped` form's is (C*B, B, k, k)), so such a graph is compiled for each input shape.
        by_shape: dict[tuple[int, ...], Any] = {}

        def compile_for(dims: tuple[int, ...]) -> Any:
            if dims not in by_shape:
                graph = core.read_model(str(path))
                graph.reshape({graph.inputs[0]: list(dims)})
                by_shape[dims] = core.compile_model(graph, "CPU", config)
            return by_shape[dims]

        if shape is not None:
            compile_for(tuple(shape))
        return lambda x: list(compile_for(tuple(x.shape))(x).to_tuple())
    raise ValueError(f"runtime {runtime!r} is not one of {', '.join(RUNTIMES)}")


def check_sizes(res: tuple[int, int], patch: int) -> list[tuple[int, int]]:
    """Three resolutions around `res` for checking a dynamic graph: `res`, about half its height, one patch wider."""
    H, W = res
    return [(H, W), (max(patch, H // 2 // patch * patch), W), (H, W + patch)]


def check_onnx(
    model: HybridViT,
    path: str | Path,
    sizes: Sequence[tuple[int, int]],
    *,
    batches: Sequence[int] = (1,),
    runtime: str = "onnxruntime",
    seed: int = 0,
) -> dict[str, Any]:
    """Run the graph at `path` in `runtime` (CPU, fp32 precision) and `model` in PyTorch (fp32) on the same random
    images, at every size in `sizes` and batch in `batches`: every output (`output_names`) against `model(x)` and,
    with detection heads, `model.predict_detections(x)`. `model` itself is left as it is (a fp32 copy runs).

    Returns {"max_abs_error" (over all outputs and checks), "max_abs_value" (of the PyTorch outputs), "shape" (of the
    tokens at the first size and batch), "outputs": {name: {"max_abs_error", "shape" (first check)}}, "checks":
    [{"batch", "res", "max_abs_error"}, ...]}.
    """
    import numpy as np

    run = runtime_session(path, runtime)
    first = next(model.parameters())
    on_cpu_fp32 = first.dtype == torch.float32 and first.device.type == "cpu"
    reference = model if on_cpu_fp32 else copy.deepcopy(model).to(device="cpu", dtype=torch.float32)
    g = torch.Generator().manual_seed(seed)
    names = output_names(model)
    outputs: dict[str, dict[str, Any]] = {}
    checks, largest = [], 0.0
    for res in sizes:
        for batch in batches:
            x = torch.randn(batch, model.cfg.in_chans, *res, generator=g)
            with torch.no_grad():
                refs = [reference(x)]
                if reference.detection_head is not None:
                    refs += list(reference.predict_detections(x))
            got = run(x.numpy())
            if len(got) != len(refs):
                raise AssertionError(f"the graph has {len(got)} outputs, expected {names}")
            errors = []
            for name, out, ref in zip(names, got, refs):
                ref = ref.numpy()
                if out.shape != ref.shape:
                    raise AssertionError(f"{runtime} output {name} has shape {out.shape}, PyTorch {ref.shape}")
                error = float(np.abs(out.astype(np.float64) - ref).max())
                errors.append(error)
                entry = outputs.setdefault(name, {"max_abs_error": 0.0, "shape": list(ref.shape)})
                entry["max_abs_error"] = max(entry["max_abs_error"], error)
                largest = max(largest, float(np.abs(ref).max()))
            checks.append({"batch": batch, "res": list(res), "max_abs_error": max(errors)})
    return {
        "max_abs_error": max(c["max_abs_error"] for c in checks),
        "max_abs_value": largest,
        "shape": outputs["tokens"]["shape"],
        "outputs": outputs,
        "checks": checks,
    }
