"""Shared test fixtures: a tiny dense physics operator with an exact prox."""

import torch

from unroll import tree


class MatrixPhysics:
    """A tiny dense operator on images ``(B, 1, H, W)``: ``A x = M vec(x)``."""

    def __init__(self, matrix, shape):
        self.matrix, self.shape = matrix, shape

    def A(self, x):
        return x.reshape(x.shape[0], -1) @ self.matrix.T

    def A_adjoint(self, y):
        return (y @ self.matrix).reshape(y.shape[0], *self.shape)

    def prox_l2(self, z, y, gamma):
        n = self.matrix.shape[1]
        h = self.matrix.T @ self.matrix + torch.eye(n, dtype=z.dtype) / gamma
        rhs = y @ self.matrix + z.reshape(z.shape[0], -1) / gamma
        return torch.linalg.solve(h, rhs.T).T.reshape(z.shape)


tree.register(
    MatrixPhysics, lambda p: ((p.matrix,), p.shape), lambda aux, ch: MatrixPhysics(ch[0], aux)
)
