"""``check_contract`` on the running Python: an object missing any required member of a contract is
refused with one line naming the member; a complete one passes; wrong signatures are refused."""

from __future__ import annotations

from typing import Any

import pytest

from hpobench_elbo.contracts import REQUIRED_MEMBERS, Method, Task, Tuner
from hpobench_elbo.errors import RegistryError
from hpobench_elbo.registry import check_contract


class CompleteMethod:
    name = "m"
    validation = "selection"

    def ask(self, ctx: Any) -> None: ...
    def tell(self, spec: Any, result: Any) -> None: ...
    def recommend(self) -> None: ...


class CompleteTuner:
    def init(self, model: Any, info: Any, config: Any, setup: Any) -> None: ...
    def step(self, model: Any, batch: Any, step: int, val_batch: Any) -> Any: ...
    def eval_model(self, model: Any) -> Any: ...
    def selection_score(self) -> None: ...
    def trajectory(self) -> list[Any]: ...


class CompleteTask:
    name = "t"
    info = None

    def run(self, spec: Any, ctx: Any) -> Any: ...
    def test(self, result: Any) -> dict[str, float]: ...


CASES = [(Method, CompleteMethod), (Tuner, CompleteTuner), (Task, CompleteTask)]


@pytest.mark.parametrize("protocol,complete", CASES, ids=lambda x: getattr(x, "__name__", ""))
def test_complete_objects_pass(protocol: type, complete: type) -> None:
    check_contract(complete(), protocol)


@pytest.mark.parametrize("protocol,complete", CASES, ids=lambda x: getattr(x, "__name__", ""))
def test_each_missing_member_is_named(protocol: type, complete: type) -> None:
    for member in REQUIRED_MEMBERS[protocol.__name__]:
        partial = type(f"Without_{member}", (), {k: v for k, v in vars(complete).items() if k != member})
        with pytest.raises(RegistryError, match=f"missing '{member}'") as err:
            check_contract(partial(), protocol)
        assert "\n" not in str(err.value)


def test_a_wrong_signature_is_refused() -> None:
    class OldTask(CompleteTask):
        def run(self, spec: Any, meter: Any, cache: Any, seeds: Any) -> Any: ...

    with pytest.raises(RegistryError, match="'run' must accept 2 positional"):
        check_contract(OldTask(), Task)

    class NoArgTell(CompleteMethod):
        def tell(self) -> None: ...

    with pytest.raises(RegistryError, match="'tell'"):
        check_contract(NoArgTell(), Method)


def test_optional_members_are_checked_when_present() -> None:
    class BadCheckpoint(CompleteMethod):
        def checkpoint(self) -> bool: return True

    with pytest.raises(RegistryError, match="'checkpoint'"):
        check_contract(BadCheckpoint(), Method)
    check_contract(type("Good", (CompleteMethod,), {"checkpoint": lambda self, t, s, v: True})(), Method)
