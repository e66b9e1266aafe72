"""DeepInverse's ``deepinv.optim.utils`` import path for the least-squares solver with the
implicit backward (see :mod:`unroll.optim.linear`)."""

from unroll.optim.linear import least_squares_implicit_backward

__all__ = ["least_squares_implicit_backward"]
