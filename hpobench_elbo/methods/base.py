"""Shared pieces of methods: recommending the best completed trial by its selection score."""

from __future__ import annotations

from typing import Any

from hpobench_elbo.contracts import TaskInfo, TrialId, TrialResult, TrialSpec


class SelectsBestScore:
    """Keeps told results and recommends the ok trial with the lowest ``score`` (earliest on ties).

    Cut, diverged and failed trials are never recommended.
    """

    def __init__(self, info: TaskInfo, seed: int) -> None:
        self.info = info
        self.seed = seed
        self.results: dict[TrialId, TrialResult] = {}

    def tell(self, spec: TrialSpec, result: TrialResult) -> None:
        if result.test is not None:
            raise ValueError("a method must never see test values")
        self.results[spec.trial_id] = result
        self.observe(spec, result)

    def observe(self, spec: TrialSpec, result: TrialResult) -> None:
        """Hook for the method's own bookkeeping."""

    def recommend(self) -> TrialId | None:
        ok = [r for r in self.results.values() if r.status == "ok" and r.score is not None]
        if not ok:
            return None
        return min(ok, key=lambda r: (r.score, r.spec.trial_id)).spec.trial_id


def describe_options(**options: Any) -> str:
    return ", ".join(f"{k}={v}" for k, v in options.items())
