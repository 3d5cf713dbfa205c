"""`rung_torch.packed_weights.pack`: decoding's matrices as views into one buffer."""

from __future__ import annotations

import sys

import pytest
import torch

from rung_torch.packed_weights import ALIGN_BYTES, HUGE_PAGE, pack


def test_packed_views_hold_the_matrices_apart_and_aligned():
    generator = torch.Generator().manual_seed(0)
    matrices = [torch.randn(shape, generator=generator) for shape in [(3, 5), (7, 2), (1, 1), (16, 33)]]
    views = pack(matrices)
    assert [v.shape for v in views] == [m.shape for m in matrices]
    assert all(torch.equal(v, m) and v.is_contiguous() for v, m in zip(views, matrices))
    storage = {v.untyped_storage().data_ptr() for v in views}
    assert len(storage) == 1  # one buffer
    assert all(v.data_ptr() % ALIGN_BYTES == 0 for v in views)
    if sys.platform.startswith("linux"):
        assert views[0].data_ptr() % HUGE_PAGE == 0  # the buffer starts on a huge-page boundary
    views[1].zero_()  # no view overlaps another
    assert torch.equal(views[0], matrices[0]) and torch.equal(views[2], matrices[2])
    assert torch.equal(views[3], matrices[3])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_pack_keeps_the_dtype(dtype):
    matrices = [torch.ones(4, 4, dtype=dtype), torch.full((2, 3), 2.0, dtype=dtype)]
    views = pack(matrices)
    assert all(v.dtype == dtype and torch.equal(v, m) for v, m in zip(views, matrices))
    assert pack([]) == []
