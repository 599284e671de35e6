"""Optuna's other samplers, driven through Optuna's ask/tell interface exactly as ``random`` and ``tpe``.

* ``cmaes``: ``CmaEsSampler`` (CMA-ES, Hansen 2016, through the ``cmaes`` package); Optuna's defaults
  (the first trial drawn at random, then a population of 4 + floor(3 ln d) per generation, the
  mean started at the centre of the space, sigma0 a sixth of its width).
* ``gp-bo``: ``GPSampler`` (Gaussian-process BO: a Matern-5/2 ARD kernel fitted by maximum a
  posteriori, log expected improvement optimised by L-BFGS over a sampled start); 10 random trials
  first (Optuna's default).
* ``qmc``: ``QMCSampler`` with a scrambled Sobol sequence (``qmc_type="sobol"``, ``scramble=True``,
  scrambled by the cell's seed); Optuna draws the first trial at random to learn the space.
* ``optuna``: any sampler class of ``optuna.samplers`` named by the suite (``sampler``) with its
  keyword options (``sampler_options``), e.g. ``{sampler: NSGAIISampler, sampler_options:
  {population_size: 10}}``.

Every method's options are checked when a suite loads (one line, exit 2): an unknown sampler, an
option its constructor does not take, one that needs a Python object, ``seed`` (always the cell's
sampler seed) or a value the constructor refuses. Each trial trains on 80% of the labelled pool
and is scored on the other 20%; cut, diverged and failed trials are told to Optuna as failed; the
recommendation is the trial with the lowest validation loss, refit on all N when the suite asks.
A space's zero-admitting strength is one continuous log10 coordinate (``space.Float``), as for TPE.
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Mapping
from typing import Any, ClassVar

import optuna

from hpobench_elbo.contracts import TaskInfo
from hpobench_elbo.errors import UserError
from hpobench_elbo.methods.random import RandomSearch

OBJECT_HINTS = ("Callable", "Sampler", "FrozenTrial", "Crossover", "Sequence[", "list[FrozenTrial")
"""Words in a constructor argument's annotation that mark a Python object a suite cannot give."""


def sampler_classes() -> dict[str, type]:
    """Every concrete public sampler class of ``optuna.samplers`` that takes a ``seed``, by name."""
    found = {}
    for name in dir(optuna.samplers):
        obj = getattr(optuna.samplers, name)
        if name.startswith("_") or not inspect.isclass(obj) or not issubclass(obj, optuna.samplers.BaseSampler):
            continue
        if inspect.isabstract(obj) or "seed" not in inspect.signature(obj).parameters:
            continue
        found[name] = obj
    return found


def build_sampler(where: str, class_name: Any, options: Any, seed: int) -> optuna.samplers.BaseSampler:
    """``optuna.samplers.<class_name>(seed=seed, **options)``; UserError (one line naming ``where``)
    for an unknown class, an unknown or reserved option, or a value the constructor refuses."""
    known = sampler_classes()
    if not isinstance(class_name, str) or class_name not in known:
        raise UserError(f"{where}: unknown sampler {class_name!r}; known: {', '.join(sorted(known))}")
    if not isinstance(options, Mapping) or not all(isinstance(k, str) for k in options):
        raise UserError(f"{where}: sampler_options must be a mapping of option names to values, got {options!r}")
    cls = known[class_name]
    params = inspect.signature(cls).parameters
    settable = [n for n, p in params.items() if n != "seed" and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)]
    for key in options:
        if key == "seed":
            raise UserError(f"{where}: {class_name} option 'seed' is set from the cell's seed, not the suite")
        if key not in params or key not in settable:
            raise UserError(f"{where}: {class_name} has no option {key!r}; its options: {', '.join(settable)}")
        hint = str(params[key].annotation)
        if any(word in hint for word in OBJECT_HINTS):
            raise UserError(f"{where}: {class_name} option {key!r} takes a Python object ({hint}), "
                            "which a suite cannot give")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return cls(seed=seed, **dict(options))
    except Exception as exc:  # noqa: BLE001 - the constructor's own check, reported as one line
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(f"{where}: {class_name}({', '.join(f'{k}={v!r}' for k, v in options.items())}) "
                        f"refused: {message}") from None


class OptunaSamplerSearch(RandomSearch):
    """Search with one Optuna sampler, named by the class (``sampler_class``) or by the suite (``optuna``)."""

    name: ClassVar[str] = "optuna"  # type: ignore[misc]
    validation = "selection"
    sampler_class: ClassVar[str | None] = None
    """The sampler a named method uses; None: the suite names it (``optuna``)."""
    defaults: ClassVar[Mapping[str, Any]] = {}
    """Sampler options this method sets unless the suite overrides them."""

    def __init__(self, info: TaskInfo, seed: int, max_trials: int | None = None, **options: Any) -> None:
        super().__init__(info, seed, max_trials=max_trials)
        class_name, sampler_options = self.split_options(options)
        sampler = build_sampler(self.name, class_name, sampler_options, seed)
        self.sampler_name = class_name
        self.study = optuna.create_study(direction="minimize", sampler=sampler)

    @classmethod
    def split_options(cls, options: Mapping[str, Any]) -> tuple[Any, dict[str, Any]]:
        """(sampler class name, its options with this method's defaults) from the method's options."""
        if cls.sampler_class is not None:
            return cls.sampler_class, {**cls.defaults, **options}
        unknown = sorted(set(options) - {"sampler", "sampler_options"})
        if unknown:
            raise UserError(f"{cls.name}: unknown option(s) {', '.join(unknown)}; "
                            "known: sampler, sampler_options, max_trials")
        if "sampler" not in options:
            raise UserError(f"{cls.name}: option 'sampler' (an optuna.samplers class name) is required")
        sampler_options = options.get("sampler_options") or {}
        return options["sampler"], sampler_options

    @classmethod
    def validate_options(cls, space: object, options: Mapping[str, Any]) -> None:
        """``max_trials`` is None or an integer >= 1; the sampler and its options build (seed 0)."""
        RandomSearch.validate_options(space, dict(options))
        rest = {k: v for k, v in options.items() if k != "max_trials"}
        class_name, sampler_options = cls.split_options(rest)
        build_sampler(cls.name, class_name, sampler_options, 0)

    @classmethod
    def inapplicable_reason(cls, info: TaskInfo) -> str | None:
        return None


class CmaEsSearch(OptunaSamplerSearch):
    """CMA-ES (Optuna's ``CmaEsSampler``)."""

    name = "cmaes"
    sampler_class = "CmaEsSampler"


class GPSearch(OptunaSamplerSearch):
    """Gaussian-process BO (Optuna's ``GPSampler``)."""

    name = "gp-bo"
    sampler_class = "GPSampler"


class QMCSearch(OptunaSamplerSearch):
    """Quasi-random search: Optuna's ``QMCSampler``, scrambled Sobol."""

    name = "qmc"
    sampler_class = "QMCSampler"
    defaults = {"qmc_type": "sobol", "scramble": True}


REGISTER = {cls.name: cls for cls in (OptunaSamplerSearch, CmaEsSearch, GPSearch, QMCSearch)}
