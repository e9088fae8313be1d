"""Property tests: schedules and criteria over many random valid arguments."""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sparsernn.prune.masks import topk_keep
from sparsernn.prune.schedules import agp_sparsity, narang_threshold


@st.composite
def windows(draw):
    start = draw(st.integers(0, 500))
    end = draw(st.integers(start + 1, start + 2000))
    ramp = draw(st.integers(start, end))
    return dict(start=start, ramp=ramp, end=end, freq=draw(st.integers(1, 300)))


@settings(max_examples=200, deadline=None)
@given(windows(), st.floats(0, 1), st.floats(0, 1), st.integers(0, 3000), st.integers(0, 3000))
def test_narang_threshold_never_decreases_and_stops_at_end(window, theta, phi, a, b):
    first, second = sorted((a, b))
    kw = dict(theta=theta, phi=phi, **window)
    assert narang_threshold(first, **kw) <= narang_threshold(second, **kw)
    if first >= window["end"]:
        assert narang_threshold(first, **kw) == narang_threshold(second, **kw)
    if first <= window["start"]:
        assert narang_threshold(first, **kw) == 0.0


@settings(max_examples=200, deadline=None)
@given(windows(), st.floats(0, 0.99), st.integers(0, 3000), st.integers(0, 3000))
def test_agp_never_decreases_and_ends_at_final(window, final, a, b):
    first, second = sorted((a, b))
    kw = dict(initial=0.0, final=final, start=window["start"], end=window["end"], freq=window["freq"])
    assert agp_sparsity(first, **kw) <= agp_sparsity(second, **kw) + 1e-12
    assert agp_sparsity(window["end"], **kw) == final


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 4), st.integers(1, 60), st.floats(0, 0.99), st.floats(0, 1), st.integers(0, 10**6))
def test_topk_keep_prunes_exact_count_pruned_first(rows, n, sparsity, pruned_fraction, seed):
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(rows, n, generator=generator)
    mask = (torch.rand(rows, n, generator=generator) >= pruned_fraction * sparsity).float()
    keep, _ = topk_keep(weight, mask, sparsity)
    k = round(sparsity * n)
    assert ((keep == 0).sum(dim=1) == k).all()
    # The Pruner's update is mask * keep: already-pruned entries are chosen first, so the new mask
    # prunes exactly max(k, already pruned) per row, and never more than needed.
    already = (mask == 0).sum(dim=1)
    assert ((mask * keep == 0).sum(dim=1) == torch.clamp(already, min=k)).all()
