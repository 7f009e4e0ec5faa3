"""The supernet: candidates inherit the teacher's tensors, switching paths matches converted models exactly."""

from __future__ import annotations

import pytest
import torch

from jetvit.conversion import convert
from jetvit.search.supernet import (
    build_supernet,
    count_parameters,
    extract,
    path_state_dict,
    sample_path,
    set_arch,
    step2_choices,
)


@pytest.mark.parametrize("share", [True, False])
def test_paths_equal_converted_models(tiny_model, share):
    teacher = tiny_model()
    net = build_supernet(teacher, ["LW"] * 4, share=share).eval()
    x = torch.randn(2, 3, 32, 32)
    for arch in ["LLLL", "WLWL", "WWWW"]:
        set_arch(net, arch)
        assert net.arch == arch
        ref = convert(teacher, arch)
        with torch.no_grad():
            torch.testing.assert_close(net(x), ref(x), rtol=1e-5, atol=1e-5)
        plain = extract(net, arch)
        assert plain.arch == arch
        assert [b.attn.kind for b in plain.blocks] == list(arch)
        with torch.no_grad():
            torch.testing.assert_close(plain(x), ref(x), rtol=1e-5, atol=1e-5)
    assert teacher.arch == "FFFF"  # untouched


def test_sharing_ties_inherited_tensors_only(tiny_model):
    teacher = tiny_model()
    shared = build_supernet(teacher, ["LW"] * 4, share=True)
    separate = build_supernet(teacher, ["LW"] * 4, share=False)
    blk = shared.blocks[1].candidates
    assert blk["L"].attn.qkv.weight is blk["W"].attn.qkv.weight
    assert blk["L"].mlp.fc1.weight is blk["W"].mlp.fc1.weight
    sep = separate.blocks[1].candidates
    assert sep["L"].attn.qkv.weight is not sep["W"].attn.qkv.weight
    torch.testing.assert_close(sep["W"].attn.qkv.weight, teacher.blocks[1].attn.qkv.weight, rtol=0, atol=0)
    # The copies are the teacher's values, not its tensors.
    assert sep["W"].attn.qkv.weight.data_ptr() != teacher.blocks[1].attn.qkv.weight.data_ptr()
    n_teacher, n_shared, n_sep = map(count_parameters, (teacher, shared, separate))
    n_extras = sum(p.numel() for n, p in shared.named_parameters() if ".conv" in n)
    assert n_shared == n_teacher + n_extras
    block_params = sum(p.numel() for p in teacher.blocks.parameters())
    assert n_sep == n_teacher + block_params + n_extras


def test_training_one_path_moves_shared_tensors_for_both(tiny_model):
    teacher = tiny_model()
    net = build_supernet(teacher, ["LW"] * 4, share=True)
    set_arch(net, "LLLL")
    w_before = net.blocks[0].candidates["W"].attn.proj.weight.detach().clone()
    net(torch.randn(1, 3, 32, 32)).square().mean().backward()
    with torch.no_grad():
        for p in net.parameters():
            if p.grad is not None:
                p -= 0.1 * p.grad
    assert not torch.equal(net.blocks[0].candidates["W"].attn.proj.weight, w_before)


def test_step2_supernet_from_extracted_model_and_errors(tiny_model):
    teacher = tiny_model()
    step1 = extract(build_supernet(teacher, ["LW"] * 4), "LWWL")
    net = build_supernet(step1, [k + "F" for k in "LWWL"])
    set_arch(net, "LFWL")
    state = path_state_dict(net, "LFWL")
    assert "blocks.1.attn.qkv.weight" in state and not any("candidates" in k for k in state)
    with pytest.raises(ValueError, match="block 0 has candidates LF"):
        set_arch(net, "WWWL")
    with pytest.raises(ValueError, match="4 blocks"):
        set_arch(net, "LF")
    with pytest.raises(ValueError, match="candidate set"):
        build_supernet(teacher, ["LL"] * 4)


def test_trading_step2_supernet_takes_the_other_kind_from_step1(tiny_model):
    """`step2.trade`: Step 2's supernet also holds the efficient kind Step 1 did not choose, with Step 1's trained
    weights for it (the donor), and Step 1's path and F inherited from Step 1's path as in the paper's."""
    assert step2_choices("LWWL") == ["LF", "WF", "WF", "LF"]
    assert step2_choices("LWWL", trade=True) == ["LWF", "WLF", "WLF", "LWF"]
    teacher = tiny_model()
    step1 = build_supernet(teacher, ["LW"] * 4)
    with torch.no_grad():  # Step 1's training, as far as this test needs: every candidate moved apart
        for i, p in enumerate(step1.parameters()):
            p.add_(0.01 * (i + 1))
    base = extract(step1, "LWWL")
    net = build_supernet(base, step2_choices("LWWL", trade=True), donor=step1)
    assert net.arch == "LWWL"
    for i, k in enumerate("LWWL"):
        cands = net.blocks[i].candidates
        for kind, source in ((k, base.blocks[i]), ("F", base.blocks[i])):
            torch.testing.assert_close(cands[kind].mlp.fc1.weight, source.mlp.fc1.weight, rtol=0, atol=0)
        other = "W" if k == "L" else "L"
        donor = step1.blocks[i].candidates[other]
        assert set(cands[other].state_dict()) == set(donor.state_dict())  # an L's convolution too
        for name, t in cands[other].state_dict().items():
            torch.testing.assert_close(t, donor.state_dict()[name], rtol=0, atol=0)
            assert t.data_ptr() != donor.state_dict()[name].data_ptr()  # copies
    # the traded path is Step 1's W or L block where the F was: it runs as the plain model with those weights
    set_arch(net, "LWWW")
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(net.eval()(x), extract(net, "LWWW").eval()(x))


def test_sample_path_is_seeded_and_covers_candidates():
    choices = ["LW", "LW", "WF", "L"]
    a = [sample_path(choices, seed=1, phase="step1", step=s) for s in range(40)]
    b = [sample_path(choices, seed=1, phase="step1", step=s) for s in range(40)]
    assert a == b
    assert {x[0] for x in a} == {"L", "W"} and {x[2] for x in a} == {"W", "F"} and {x[3] for x in a} == {"L"}
