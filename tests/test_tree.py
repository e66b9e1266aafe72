"""unroll.tree against hand-computed flat-vector references (float64)."""

from __future__ import annotations

from typing import NamedTuple

import pytest
import torch

from unroll import tree

DT = torch.float64


class State(NamedTuple):
    x: torch.Tensor
    aux: tuple


def sample(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=DT)  # noqa: E731
    return {"w": r(3, 4), "s": State(r(3), (r(3, 2, 2),))}


def flat(t) -> torch.Tensor:
    return torch.cat([leaf.reshape(-1) for leaf in tree.leaves(t)])


def batch_flat(t) -> torch.Tensor:
    return torch.cat([leaf.reshape(leaf.shape[0], -1) for leaf in tree.leaves(t)], dim=1)


def test_elementwise_ops_match_flat_vectors():
    a, b = sample(0), sample(1)
    fa, fb = flat(a), flat(b)
    torch.testing.assert_close(flat(tree.add(a, b)), fa + fb)
    torch.testing.assert_close(flat(tree.sub(a, b)), fa - fb)
    torch.testing.assert_close(flat(tree.scale(2.5, a)), 2.5 * fa)
    torch.testing.assert_close(flat(tree.add_scaled(a, -0.3, b)), fa - 0.3 * fb)
    torch.testing.assert_close(flat(tree.mul(a, b)), fa * fb)
    torch.testing.assert_close(flat(tree.neg(a)), -fa)
    assert torch.equal(flat(tree.zeros_like(a)), torch.zeros_like(fa))
    assert torch.equal(flat(tree.ones_like(a)), torch.ones_like(fa))
    assert tree.structure(tree.add(a, b)) == tree.structure(a)


def test_reductions_match_flat_vectors():
    a, b = sample(0), sample(1)
    fa, fb = flat(a), flat(b)
    torch.testing.assert_close(tree.vdot(a, b), fa @ fb)
    torch.testing.assert_close(tree.norm(a), torch.linalg.norm(fa))
    torch.testing.assert_close(tree.sum_squares(a), fa @ fa)
    torch.testing.assert_close(tree.max_abs(a), fa.abs().max())
    assert tree.vdot(a, b).dim() == 0 and tree.size(a) == fa.numel()


def test_complex_vdot_conjugates_first_argument():
    g = torch.Generator().manual_seed(0)
    a = {"z": torch.randn(5, dtype=torch.complex128, generator=g)}
    b = {"z": torch.randn(5, dtype=torch.complex128, generator=g)}
    torch.testing.assert_close(tree.vdot(a, b), torch.vdot(a["z"], b["z"]))
    torch.testing.assert_close(tree.norm(a), torch.linalg.norm(a["z"]))


def test_batched_reductions_are_per_sample():
    a, b = sample(2), sample(3)
    fa, fb = batch_flat(a), batch_flat(b)
    torch.testing.assert_close(tree.batch_vdot(a, b), (fa * fb).sum(1))
    torch.testing.assert_close(tree.batch_norm(a), torch.linalg.norm(fa, dim=1))
    s = torch.tensor([1.0, -2.0, 0.5], dtype=DT)
    torch.testing.assert_close(batch_flat(tree.batch_scale(s, a)), s[:, None] * fa)
    torch.testing.assert_close(batch_flat(tree.batch_add_scaled(a, s, b)), fa + s[:, None] * fb)
    m = torch.tensor([True, False, True])
    torch.testing.assert_close(
        batch_flat(tree.batch_where(m, a, b)), torch.where(m[:, None], fa, fb)
    )


def test_allclose_and_where():
    a = sample(0)
    assert tree.allclose(a, tree.add(a, tree.full_like(a, 1e-12)))
    assert not tree.allclose(a, tree.scale(2.0, a))
    assert not tree.allclose(a, {"w": a["w"]})
    torch.testing.assert_close(flat(tree.where(True, a, tree.zeros_like(a))), flat(a))


def test_empty_tree_raises_clear_error():
    with pytest.raises(ValueError, match="unroll.tree: .*no tensor leaves"):
        tree.vdot({}, {})


def test_registered_class_is_seen_by_optree_and_torch_func():
    class Box:
        def __init__(self, k: torch.Tensor, tag: str):
            self.k, self.tag = k, tag

    tree.register(Box, lambda b: ((b.k,), b.tag), lambda tag, ch: Box(ch[0], tag))
    box = Box(torch.arange(3.0, dtype=DT), "blur")
    assert len(tree.leaves(box)) == 1
    doubled = tree.scale(2.0, box)
    assert isinstance(doubled, Box) and doubled.tag == "blur"
    # torch.func.vmap maps over the registered leaf: a batch of 4 boxes.
    batch = Box(torch.arange(12.0, dtype=DT).reshape(4, 3), "blur")
    out = torch.func.vmap(lambda b: (b.k**2).sum())(batch)
    torch.testing.assert_close(out, (batch.k**2).sum(1))
