"""Test-wide settings: one intra-op thread (small convolutions are far slower with 2 threads
on the CI machines, and dense float64 reference solves are only trusted single-threaded)."""

import torch

torch.set_num_threads(1)
