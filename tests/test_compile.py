"""Regional compilation (`jetvit.compile`): one compiled graph per block kind, the same outputs and gradients as eager,
composed with activation checkpointing and supernets. Compiled with `aot_eager` here (Dynamo and AOT autograd, no
code generation: seconds on the CPU); one slow test compiles with Inductor."""

from __future__ import annotations

import copy

import pytest
import torch
from torch._dynamo.testing import CompileCounter

from jetvit.compile import compile_regions, default_backend, is_compiled, regions, uncompile_regions
from jetvit.search.supernet import build_supernet, set_arch

ARCH = "LWFLWFLL"  # 8 blocks of 3 kinds


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _images(batch: int = 2, size: int = 24, seed: int = 1) -> torch.Tensor:
    # 24 px at patch 8: a 3x3 grid, which 2x2 windows cover with padding (masked windows)
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _forward_backward(model: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    out = model(x)
    (out.square().mean()).backward()
    return out.detach(), [p.grad.clone() for p in model.parameters()]


def test_blocks_of_one_kind_share_one_graph(tiny_model):
    model = tiny_model(ARCH, random_weights=True).train()
    counter = CompileCounter()
    compile_regions(model, backend=counter)
    assert is_compiled(model)
    model(_images())
    assert counter.frame_count == len(set(ARCH))  # 3 graphs for 8 blocks
    model(_images(seed=2))  # same shapes: every block hits its kind's cached graph
    assert counter.frame_count == len(set(ARCH))


def _assert_compiled_matches_eager(eager, *, backend, checkpointing=False, tol=(1e-5, 1e-5), grad_tol=(1e-4, 1e-5)):
    """The regionally compiled copy of `eager` gives its outputs and parameter gradients within (rtol, atol)."""
    compiled = compile_regions(copy.deepcopy(eager), backend=backend)
    compiled.set_grad_checkpointing(checkpointing)
    x = _images()
    out_e, grads_e = _forward_backward(eager, x)
    out_c, grads_c = _forward_backward(compiled, x)
    torch.testing.assert_close(out_c, out_e, rtol=tol[0], atol=tol[1])
    for ge, gc in zip(grads_e, grads_c):
        torch.testing.assert_close(gc, ge, rtol=grad_tol[0], atol=grad_tol[1])


def test_compiled_forward_and_backward_match_eager(tiny_model):
    _assert_compiled_matches_eager(tiny_model(ARCH, random_weights=True).train(), backend="aot_eager")


def test_compiled_blocks_compose_with_activation_checkpointing(tiny_model):
    eager = tiny_model(ARCH, random_weights=True).train()
    _assert_compiled_matches_eager(eager, backend="aot_eager", checkpointing=True)


def test_a_new_batch_size_compiles_once_more_per_kind_then_never(tiny_model):
    model = tiny_model(ARCH, random_weights=True)
    counter = CompileCounter()
    compile_regions(model, backend=counter)
    with torch.no_grad():
        for batch in (1, 2, 3, 5):
            model(_images(batch))
    # the first size specialised, the second marks the batch dynamic; then the dynamic graph serves every batch
    assert counter.frame_count == 2 * len(set(ARCH))


def test_supernet_candidates_are_compiled_and_reuse_graphs_across_paths(tiny_model):
    base = tiny_model("FFFF", random_weights=True)
    net = build_supernet(base, ["LW"] * 4).train()
    counter = CompileCounter()
    compile_regions(net, backend=counter)
    assert len(list(regions(net))) == 8  # each candidate of each block, not the switches
    x = _images()
    for arch in ("LLLL", "WWWW", "LWLW"):
        set_arch(net, arch)
        net(x).sum().backward()
    assert counter.frame_count == 2


def test_uncompile_restores_eager_copies_run_eager_and_a_plain_model_is_refused(tiny_model):
    model = compile_regions(tiny_model(ARCH), backend=CompileCounter())
    assert not is_compiled(copy.deepcopy(model))  # nn.Module drops the compiled forward of a copy: compile after
    uncompile_regions(model)
    assert not is_compiled(model)
    with pytest.raises(ValueError, match="blocks"):
        compile_regions(torch.nn.Linear(2, 2))


def test_default_backend_is_inductor_unless_the_environment_says(monkeypatch):
    monkeypatch.delenv("JETVIT_COMPILE_BACKEND", raising=False)
    assert default_backend() == "inductor"
    monkeypatch.setenv("JETVIT_COMPILE_BACKEND", "aot_eager")
    assert default_backend() == "aot_eager"


@pytest.mark.slow
def test_inductor_compiled_forward_and_backward_match_eager(tiny_model):
    eager = tiny_model(ARCH, random_weights=True).train()
    _assert_compiled_matches_eager(eager, backend="inductor", tol=(1e-4, 1e-4), grad_tol=(1e-3, 1e-4))
