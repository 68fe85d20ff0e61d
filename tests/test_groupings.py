"""How the model moves tokens into each step's groups and back: the reshaped views equal the index gathers
they replace, regular grids run without any gather, and the cached groupings survive inference mode."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from timesformer import ATTENTION_TYPES, TimeSformer, TimeSformerConfig
from timesformer.groupings import KEYS, SCHEMES, scheme_groupings

GRIDS = [(4, 4, 4), (8, 14, 14), (3, 5, 7), (1, 1, 1), (2, 3, 1), (5, 2, 6), (1, 4, 6), (6, 1, 2)]


def gathered(g):
    """The same grouping without its layout: the model then gathers by index."""
    off = 1 if g.with_cls else 0
    patch_index = (g.index[:, off:] - (g.num_cls if g.with_cls else 0)).clamp(min=0)
    return dataclasses.replace(g, layout=None, patch_index=patch_index)


@pytest.mark.parametrize("attention_type", ATTENTION_TYPES)
@pytest.mark.parametrize("grid", GRIDS)
def test_reshaped_groups_equal_the_index_gather(attention_type, grid):
    T, H, W = grid
    B, D = 2, 3
    for g in scheme_groupings(attention_type, grid):
        C = g.num_cls
        cls, patches = torch.randn(B, C, D), torch.randn(B, T * H * W, D)
        ref = gathered(g)
        assert (g.layout is None) == (g.valid is not None)  # a layout exactly where no group is padded
        if g.layout is not None:
            assert (g.layout.groups, g.layout.slots + g.with_cls) == tuple(g.index.shape)
        tokens = g.regroup(cls, patches)
        assert torch.equal(tokens, ref.regroup(cls, patches))
        # the regrouped sequence is the one `index` describes (cls first, padding slots aside)
        seq = torch.cat([cls, patches], 1) if g.with_cls else patches
        keep = g.valid if g.valid is not None else torch.ones(g.index.shape, dtype=torch.bool)
        assert torch.equal(tokens[:, keep], seq[:, g.index][:, keep])
        y = torch.randn(tokens.shape)
        for got, want in zip(g.add_back(cls, patches, y), ref.add_back(cls, patches, y)):
            assert (got is None and want is None) or torch.allclose(got, want, atol=1e-6)
        if g.is_sequence(seq):  # joint: its one group is the sequence, regrouped without a copy
            whole = seq.clone()
            assert g.regroup(whole[:, :1], whole[:, 1:], whole).data_ptr() == whole.data_ptr()


def test_group_keys_are_the_layouts_order():
    """KEYS (what analysis.cost counts with) numbers the groups in the order the layouts produce them."""
    import types

    import numpy as np

    split = types.SimpleNamespace(local_split=2, global_stride=2)
    T, H, W = 4, 6, 8
    p = np.arange(T * H * W)
    t, h, w = p // (H * W), (p // W) % H, p % W
    for name in KEYS:
        key = np.broadcast_to(KEYS[name](t, h, w, T, H, W, split), p.shape)
        g = next(g for s in SCHEMES for g in scheme_groupings(s, (T, H, W)) if g.step == name)
        off = 1 if g.with_cls else 0
        first_patch = g.index[:, off] - (g.num_cls if g.with_cls else 0)  # group order by their first patch
        assert np.array_equal(np.unique(key[first_patch.numpy()]), np.arange(g.num_groups)), name
        assert list(key[first_patch.numpy()]) == sorted(key[first_patch.numpy()]), name


class Ops(TorchDispatchMode):
    """Names of the aten ops a block of code dispatches (forward and, on CPU, backward)."""

    def __init__(self):
        super().__init__()
        self.names: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(func.overloadpacket.__name__)
        return func(*args, **(kwargs or {}))


def small(attention_type, **kw):
    torch.manual_seed(0)
    cfg = dict(img_size=32, patch_size=8, num_frames=4, embed_dim=32, depth=2, num_heads=4, num_classes=5,
               drop_path_rate=0.0)
    return TimeSformer(TimeSformerConfig(attention_type=attention_type, **{**cfg, **kw}))


@pytest.mark.parametrize("attention_type", ATTENTION_TYPES)
def test_regular_grids_move_tokens_without_gathers(attention_type):
    model = small(attention_type).train()
    video, odd = torch.randn(2, 3, 4, 32, 32), torch.randn(1, 3, 3, 40, 24)
    with torch.no_grad():  # the groupings are built (with index arithmetic) once per grid, outside the count
        model(video), model(odd)
    with Ops() as forward:
        out = model(video)
    with Ops() as backward:
        out.sum().backward()
    moves = [n for n in forward.names + backward.names if n.startswith(("index", "gather", "scatter", "_index_put"))]
    assert moves == []
    # per block at most one cat per step (cls into the groups) and one for the MLP
    steps = len(SCHEMES[attention_type].steps)
    embed_and_end = 1 + (attention_type == "space_only")  # cls before the blocks; space_only's cls mean
    assert forward.names.count("cat") <= 2 * (steps + 1) + embed_and_end
    # the tokens are split into cls and patches, and the step outputs into cls and patch outputs: their
    # gradients are concatenated, not zero-filled per part and added. Still sliced, once per forward: the
    # position embedding (cls and patches), the head's cls, the last step's cls queries, and joint's cls (the
    # one step used the whole sequence) or space_only's per-frame cls tokens (averaged at the end)
    sliced = backward.names.count("slice_backward") + backward.names.count("select_backward")
    assert sliced <= 4 + (attention_type in ("space_only", "joint_space_time"))
    with Ops() as ops:  # a grid with odd sides: L+G gathers its padded groups, nobody else does
        model(odd).sum().backward()
    gathers = [n for n in ops.names if n == "index"]
    assert bool(gathers) == (attention_type == "sparse_local_global")


@pytest.mark.parametrize("attention_type", ATTENTION_TYPES)
@pytest.mark.parametrize("shape", [(1, 3, 4, 32, 32), (1, 3, 3, 40, 24)], ids=["even", "odd"])
def test_inference_mode_first_then_autograd(attention_type, shape):
    """The groupings cache is filled by whichever forward comes first; inference mode must not poison it."""
    scheme_groupings.cache_clear()
    model = small(attention_type).eval()
    video = torch.randn(shape)
    with torch.inference_mode():
        ref = model(video)  # fills the cache (and the folded proj∘fc weights) under inference mode
    with torch.no_grad():
        assert torch.allclose(model(video), ref, atol=1e-5)
    model.train()
    out = model(video)
    out.sum().backward()  # would raise "Inference tensors cannot be saved for backward"
    assert torch.allclose(out, ref, atol=1e-5)
    with torch.inference_mode():
        assert torch.allclose(model.eval()(video), ref, atol=1e-5)
    assert all(not g.index.is_inference() for g in scheme_groupings(attention_type, model.grid_of(video)))


@pytest.mark.parametrize("knob", ["MATH_BELOW", "PACK_TO"])
@pytest.mark.parametrize("attention_type", ATTENTION_TYPES)
def test_short_groups_by_matmul_and_softmax_or_packed_give_the_same_model(attention_type, knob, monkeypatch):
    """MATH_BELOW and PACK_TO (GPU tuning knobs) swap the fused kernel for matmul + softmax on short groups, or
    pack short groups into masked sequences: same results."""
    from timesformer import attention

    model = small(attention_type).train()
    video = torch.randn(2, 3, 4, 32, 32)
    packed, packing = [], attention.packing
    monkeypatch.setattr(attention, "packing", lambda *a: packed.append(packing(*a)) or packed[-1])
    runs = []
    for value in (0, 1000):
        monkeypatch.setattr(attention, knob, value)
        model.zero_grad()
        out = model(video)
        out.pow(2).sum().backward()
        runs.append((out.detach(), [p.grad.clone() for p in model.parameters()]))
    assert torch.allclose(runs[0][0], runs[1][0], atol=1e-5)
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(runs[0][1], runs[1][1]))
    assert (max(packed) > 1) == (knob == "PACK_TO")  # every scheme has a step whose groups were packed


def test_packing_takes_the_most_whole_groups_that_fit(monkeypatch):
    from timesformer import attention

    assert attention.packing(1568, 8) == 1  # PACK_TO = 0: nothing is packed
    monkeypatch.setattr(attention, "PACK_TO", 64)
    # divided's time groups at 8×224, batch 8: 8 groups of 8; axial's rows of 14 + cls: 4 of 15; an odd count
    assert [attention.packing(1568, 8), attention.packing(896, 15), attention.packing(6, 8)] == [8, 4, 6]
    assert [attention.packing(13, 15), attention.packing(8, 64), attention.packing(8, 197)] == [1, 1, 1]
