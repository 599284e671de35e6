"""Named child seeds of a cell seed, so every random stream is explicit and reproducible."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SEED_NAMES = ("subset", "split", "init", "sampler", "noise")


@dataclass(frozen=True)
class Seeds:
    """The cell seed and one 32-bit child seed per purpose (from ``numpy.random.SeedSequence``).

    ``subset`` draws the labelled pool N, ``split`` its validation carve-out, ``init`` the model
    initialisation, ``sampler`` the method's own randomness, ``noise`` batch order and weight
    noise. Cells with the same seed share ``subset`` and ``split`` whatever the method, so every
    method sees the same data.
    """

    cell_seed: int
    subset: int
    split: int
    init: int
    sampler: int
    noise: int

    @classmethod
    def from_cell(cls, cell_seed: int) -> Seeds:
        children = np.random.SeedSequence(cell_seed).spawn(len(SEED_NAMES))
        values = [int(c.generate_state(1)[0]) for c in children]
        return cls(cell_seed, *values)

    def for_trial(self, name: str, trial_id: int) -> int:
        """A per-trial seed of one stream (e.g. each trial's initialisation differs but repeats)."""
        return self.derive(getattr(self, name), trial_id)

    @staticmethod
    def derive(*parts: int) -> int:
        """A 32-bit seed derived from named seeds and integers (e.g. a stage's seed from the subset and
        split seeds, so the same prefix gives the same output in every trial and cell)."""
        return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0])

    def to_json(self) -> dict[str, int]:
        return {"cell_seed": self.cell_seed, **{n: getattr(self, n) for n in SEED_NAMES}}
