"""A method with its own training step: random learning rates, each trained by a tuner that keeps a
Polyak (running) average of the weights and deploys the average."""

from plugins.polyak.method import PolyakSearch
from plugins.polyak.tuner import PolyakTuner

__all__ = ["PolyakSearch", "PolyakTuner"]
