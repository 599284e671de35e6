"""Seeded randomness of a training run: the torch RNG fork and the minibatch order.

Every seed comes from the cell's ``Seeds``; these helpers only apply one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch


@contextmanager
def seeded(seed: int, device: str = "cpu") -> Iterator[None]:
    """Run a block under torch's global RNGs (CPU and, on a GPU, the current CUDA device) seeded with
    ``seed``, restoring them afterwards: initialisation, dropout and augmentation repeat exactly."""
    devices: list[int] = []
    if device.startswith("cuda") and torch.cuda.is_available():
        devices = [torch.device(device).index or 0]
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)  # seeds the CUDA generators too
        yield


def minibatch_indices(n: int, batch_size: int | None, generator: torch.Generator) -> Callable[[], torch.Tensor]:
    """A function returning the next minibatch's indices into ``range(n)``: shuffled epochs, the
    last partial batch dropped and the order reshuffled; ``batch_size`` None or >= n: full batch."""
    size = n if batch_size is None or batch_size >= n else batch_size
    state = {"perm": torch.randperm(n, generator=generator), "pos": 0}

    def next_indices() -> torch.Tensor:
        if state["pos"] + size > n:
            state["perm"], state["pos"] = torch.randperm(n, generator=generator), 0
        idx = state["perm"][state["pos"]:state["pos"] + size]
        state["pos"] += size
        return idx

    return next_indices
