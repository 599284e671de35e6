"""The ledger: an append-only JSONL journal per cell, the single source of truth for results.

This docstring is the one place the schema is documented. Current version: 5. One JSON object
per line:

* line 1, ``{"type": "header", ...}``: ``schema``, ``suite``, ``suite_hash``, ``cell`` (task,
  scale, method, options, seed, budget, clock, refit, cache, label), ``seeds`` (the named child
  seeds), ``versions`` (python and key packages), ``git_sha``, ``device``, ``clock``, ``unit``,
  ``threads`` (torch threads the cell used), ``determinism``, ``metric``, ``direction`` (of the task's
  test metric), ``created``, ``where`` (executor, host, pid; on Ray node id and address),
  ``oversubscribed`` (when allowed: jobs, threads, cpus);
  since version 2: ``recipe`` (the task's training recipe, ``contracts.Recipe``; null for a task
  that trains nothing), ``validation`` (the method's: ``selection``, ``hypergradient``, ``none``)
  and ``data_use`` (what data the method trained and selected on, in words); since version 4:
  ``machine`` (``cpus``: the machine's logical CPUs; ``load``: its 1-, 5- and 15-minute load
  averages when the cell started; absent where the platform has no load average).
* then one ``{"type": "trial", ...}`` line per finished trial (any status), fsynced: the
  ``TrialResult`` fields (``trial_id``, ``kind``, ``config``, ``tuner``, ``data``, ``status``,
  ``cost`` per phase, ``steps``, ``planned_steps``, ``score``, ``score_name``, ``metrics``,
  ``test``, ``trajectory``, ``cache_hits``, ``cache_misses``, ``cost_saved``, ``cache_keys``,
  ``overshoot``, ``n_train``, ``error``; since version 3 ``stage_costs``: the true cost of each
  pipeline stage the trial computed or read, in order; ``checkpoints`` and ``intermediate`` (the
  (step, value) pairs reported at them) when the method uses pruning; ``cache_recomputed`` when a
  stage the cell had paid for was missing from the cache and was recomputed, charged as a read),
  plus ``recommendation`` (the trial the method would deploy
  after this one), ``spent`` (cumulative charged cost), ``meter`` (cumulative cost per phase, so a
  resume restores the meter exactly), ``unit`` and ``time`` (ISO timestamp, informative). A refit
  row also carries ``stop_reason``, and since version 5 ``refit_status`` (the refit guard's verdict,
  ``engine/loop.refit_verdict``: ``accepted``, the refit is deployed; ``rejected``, it ended
  other than ok or its final training loss was not finite or beyond the margin of the selected
  trial's, whose model stays deployed (``recommendation``); ``unchecked``, no training loss to
  compare, deployed) and ``refit_reason`` (why, for rejected and unchecked). Since version 4 every trial row carries ``machine``: ``{"load": the
  machine's 1-minute load average when the row was written}`` (so a reader sees the load while the
  cell ran, trial by trial; absent where the platform has none).
* last, once the cell has finished, ``{"type": "end", "reason": ..., "spent": ..., "recommendation":
  ..., "overshoot": ..., "meter": ...}``, and since version 4 ``machine`` as on a trial row.

Versions: each change bumps :data:`SCHEMA_VERSION`; new fields are optional and :func:`migrate`
brings every older version to the current one on read, so committed ledgers stay readable.

* 1 -> 2: the header gains ``recipe``, ``validation`` and ``data_use`` (read as null / "unknown").
* 2 -> 3: trial rows gain ``stage_costs`` (read as ``{}``: older rows tell no prefix).
* 3 -> 4: header, trial rows and the end record gain ``machine`` (the machine's load; older
  ledgers simply lack it, and readers say "not recorded").
* 4 -> 5: refit rows gain ``refit_status`` and ``refit_reason`` (older refits were deployed
  unchecked whenever they completed ok; readers show no verdict for them).

A torn last line (a crash mid-write) is moved to ``<file>.torn`` with a warning and the run goes
on; damage before the last line stops with a ``LedgerError`` naming the file and line.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, NonNegativeFloat, StrictInt, ValidationError

from hpobench_elbo.engine.faults import fault_point
from hpobench_elbo.errors import LedgerError

UNDOCUMENTED_FIELDS = frozenset({"time", "created", "versions", "git_sha", "machine", "device_name", "where"})
"""Fields that describe when, where and with what a record was written, not the results: left out
when two runs' ledgers are compared (kill-and-resume tests, golden ledgers, benchmarks/faults.py)."""


def documented_fields(record: Mapping[str, Any]) -> dict[str, Any]:
    """A record without its :data:`UNDOCUMENTED_FIELDS`."""
    return {k: v for k, v in record.items() if k not in UNDOCUMENTED_FIELDS}


SCHEMA_VERSION = 5
KNOWN_VERSIONS = (1, 2, 3, 4, 5)


def machine_load(start: bool = False) -> dict[str, Any]:
    """The ``machine`` field of a record: the load averages now (all three and the CPU count for a
    header, ``start``; the 1-minute one otherwise); empty where the platform has no load average."""
    try:
        one, five, fifteen = os.getloadavg()
    except (AttributeError, OSError):
        return {"cpus": os.cpu_count()} if start else {}
    if start:
        return {"cpus": os.cpu_count(), "load": [round(one, 2), round(five, 2), round(fifteen, 2)]}
    return {"load": round(one, 2)}


def migrate(header: dict[str, Any]) -> dict[str, Any]:
    """The header of any known schema version, in the current version's shape (rows are migrated
    by :func:`migrate_row`)."""
    out = dict(header)
    if out.get("schema") == 1:
        out.update({"recipe": None, "validation": "unknown", "data_use": "unknown"})
    return out


def migrate_row(row: dict[str, Any]) -> dict[str, Any]:
    """A trial row of any known schema version in the current version's shape."""
    if row.get("type") == "trial" and "stage_costs" not in row:
        return {**row, "stage_costs": {}}
    return row


@dataclass(frozen=True)
class LedgerContents:
    header: dict[str, Any]
    rows: list[dict[str, Any]]
    torn: str | None  # the text of a torn last line, if any
    end: dict[str, Any] | None = None  # the closing record of a finished cell


class _Record(BaseModel):
    model_config = ConfigDict(extra="allow")


class HeaderRecord(_Record):
    """The first line (the fields every version has; later ones are optional)."""

    type: Literal["header"]
    schema_version: StrictInt = Field(alias="schema")
    suite: str
    suite_hash: str
    cell_id: str
    cell: dict[str, Any]
    seeds: dict[str, StrictInt]
    clock: str
    unit: str


class TrialRecord(_Record):
    """One finished trial."""

    type: Literal["trial"]
    trial_id: StrictInt = Field(ge=0)
    kind: Literal["trial", "refit"]
    config: dict[str, Any]
    tuner: dict[str, Any]
    data: Literal["split", "all"]
    status: Literal["ok", "cut", "pruned", "diverged", "failed"]
    cost: dict[str, NonNegativeFloat]
    steps: StrictInt = Field(ge=0)
    score: float | None
    metrics: dict[str, float | None]
    test: dict[str, float | None] | None
    trajectory: list[dict[str, Any]]
    recommendation: StrictInt | None
    spent: NonNegativeFloat
    meter: dict[str, NonNegativeFloat]
    refit_status: Literal["accepted", "rejected", "unchecked"] | None = None


class EndRecord(_Record):
    """The closing record of a finished cell."""

    type: Literal["end"]
    reason: str
    spent: NonNegativeFloat
    recommendation: StrictInt | None


RECORDS: dict[str, type[_Record]] = {"header": HeaderRecord, "trial": TrialRecord, "end": EndRecord}


def check_record(obj: Any) -> None:
    """Raise ValueError (one line) unless ``obj`` is a valid record of a known type."""
    if not isinstance(obj, dict) or obj.get("type") not in RECORDS:
        kind = obj.get("type") if isinstance(obj, dict) else type(obj).__name__
        raise ValueError(f"not a ledger record (type {kind!r})")
    try:
        RECORDS[obj["type"]].model_validate(obj)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "record"
        raise ValueError(f"{obj['type']} record: {where}: {err['msg']}") from None


def _no_constant(name: str) -> Any:
    """``json.loads``' hook for ``NaN`` / ``Infinity``: a writer never writes them (``allow_nan=False``;
    a non-finite value is written as null), so in a ledger they are damage."""
    raise ValueError(f"{name} is not a valid ledger value (non-finite numbers are written as null)")


def _check_sequence(obj: dict[str, Any], objects: list[dict[str, Any]]) -> None:
    """A trial row or end record after the records ``objects`` before it: trial ids 0, 1, 2, ...
    in order (a resumed cell continues the numbering), cumulative ``spent`` never decreasing, and a
    recommendation that names an ``ok`` trial recorded so far (the row itself included)."""
    before = [o for o in objects if o["type"] == "trial"]
    if obj["type"] == "trial":
        if obj["trial_id"] in {t["trial_id"] for t in before}:
            raise ValueError(f"trial {obj['trial_id']} recorded twice")
        expected = before[-1]["trial_id"] + 1 if before else 0
        if obj["trial_id"] != expected:
            raise ValueError(f"trial {obj['trial_id']} out of order (expected trial {expected}: trial ids are "
                             "0, 1, 2, ... in the order they ran)")
    if before and obj["spent"] < before[-1]["spent"]:
        raise ValueError(f"spent {obj['spent']:g} is below the {before[-1]['spent']:g} already recorded "
                         "(spent is cumulative)")
    known = [*before, obj] if obj["type"] == "trial" else before
    rec = obj.get("recommendation")
    if rec is not None and not any(t["trial_id"] == rec and t["status"] == "ok" for t in known):
        raise ValueError(f"recommendation {rec} is not an ok trial of this ledger")


def _parse(path: Path, text: str) -> LedgerContents:
    """Parse and check a ledger's text: every line a valid record, the header first, trial ids in
    order and each once, recommendations that name ok trials, no NaN, nothing after the end record;
    a damaged last line is ``torn``; damage before it raises."""
    lines = text.split("\n")
    complete, tail = lines[:-1], lines[-1]  # ``tail`` is what follows the last newline
    numbered = [(n, line) for n, line in enumerate(complete, start=1) if line.strip()]
    if tail.strip():
        numbered.append((len(complete) + 1, tail))
    objects: list[dict[str, Any]] = []
    torn: str | None = None
    for position, (number, line) in enumerate(numbered):
        try:
            obj = json.loads(line, parse_constant=_no_constant)
            check_record(obj)
            if position == 0 and obj["type"] != "header":
                raise ValueError("the first record is not the header")
            if position > 0 and obj["type"] == "header":
                raise ValueError("a second header")
            if objects and objects[-1]["type"] == "end":
                raise ValueError("a record after the end record")
            if obj["type"] != "header":
                _check_sequence(obj, objects)
        except ValueError as exc:
            if position == len(numbered) - 1 and position > 0:
                torn = line
                break
            raise LedgerError(f"{path}:{number}: damaged ledger line ({exc}); fix or delete the file") from None
        objects.append(obj)
    if not objects:
        raise LedgerError(f"{path}:1: missing ledger header")
    header, rows = objects[0], objects[1:]
    if header.get("schema") not in KNOWN_VERSIONS:
        raise LedgerError(f"{path}:1: ledger schema {header.get('schema')!r}; this version reads "
                          f"{', '.join(map(str, KNOWN_VERSIONS))}")
    header = migrate(header)
    ends = [r for r in rows if r.get("type") == "end"]
    return LedgerContents(header, [migrate_row(r) for r in rows if r.get("type") == "trial"], torn,
                          ends[-1] if ends else None)


def read_ledger(path: str | Path) -> LedgerContents:
    """Read and check a ledger without changing it (a torn last line is reported, not moved).

    Every reader goes through here, so every reader checks that the ledger belongs to its file's
    cell: a ``<cell-id>.jsonl`` whose header names another cell id raises :class:`LedgerError`
    ("ledger belongs to another cell"), e.g. a seed-1 ledger copied over the seed-0 file.

    A 0-byte ledger means "not started" to every command: ``resume`` runs the cell, ``status``
    counts it as remaining, ``report`` leaves it out and says so; here it raises
    :class:`EmptyLedger`.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise LedgerError(f"{path}: no such ledger") from None
    if not raw:
        raise EmptyLedger(f"{path}: empty ledger (the cell has not started)")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise LedgerError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    contents = _parse(path, text)
    if path.suffix == ".jsonl" and contents.header.get("cell_id") != path.stem:
        raise LedgerError(f"{path}: ledger belongs to another cell (its header names "
                          f"{contents.header.get('cell_id')!r}); a ledger is named after its cell: restore "
                          "the right file or delete this one")
    return contents


class EmptyLedger(LedgerError):
    """A 0-byte ledger: the cell has not started."""


class LedgerLike(Protocol):
    """What the loop needs of a cell's ledger: the recorded trial rows and end record (for replay),
    and ``append`` (fsynced before it returns, by whoever writes the file)."""

    path: Path
    rows: list[dict[str, Any]]
    end: dict[str, Any] | None

    def append(self, row: Mapping[str, Any], kind: str = "trial") -> None: ...


class Ledger:
    """An open, append-only ledger file for one cell."""

    def __init__(self, path: Path, header: dict[str, Any], rows: list[dict[str, Any]],
                 end: dict[str, Any] | None = None) -> None:
        self.path = path
        self.header = header
        self.rows = rows
        self.end = end

    @classmethod
    def open(cls, path: str | Path, header: Mapping[str, Any], force: bool = False) -> Ledger:
        """Open for appending; create with ``header`` or check an existing file against it.

        An existing ledger of another cell is refused; one whose ``suite_hash`` differs is refused
        unless ``force`` or it is finished (it has its end record: nothing will be appended, and a
        cell is its definition, so a finished run taken from another suite, ``--reuse``, is kept).
        """
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists() and path.stat().st_size > 0 and b"\n" not in path.read_bytes():
            cls._move_torn(path, path.read_text(encoding="utf-8", errors="replace"))  # a torn header line
        if not path.exists() or path.stat().st_size == 0:
            full = {"type": "header", "schema": SCHEMA_VERSION, **header,
                    "created": datetime.now(timezone.utc).isoformat(), "machine": machine_load(start=True)}
            tmp = path.with_name(path.name + ".tmp")  # written whole, then renamed: never a 0-byte ledger
            try:
                with open(tmp, "w", encoding="utf-8") as fh:
                    fh.write(json.dumps(full, sort_keys=True) + "\n")
                    fh.flush()
                    os.fsync(fh.fileno())
                os.replace(tmp, path)
            except OSError:
                tmp.unlink(missing_ok=True)
                raise
            return cls(path, full, [])
        contents = read_ledger(path)
        if contents.torn is not None:
            cls._move_torn(path, contents.torn)
        existing = contents.header
        if existing.get("cell") != header.get("cell"):
            raise LedgerError(f"{path}: ledger belongs to another cell; use another output directory")
        if existing.get("suite_hash") != header.get("suite_hash") and not force and contents.end is None:
            raise LedgerError(
                f"{path}: the suite changed since this run started "
                f"({existing.get('suite_hash')} -> {header.get('suite_hash')}); resume with --force to continue anyway"
            )
        return cls(path, existing, contents.rows, contents.end)

    @staticmethod
    def _move_torn(path: Path, torn: str) -> None:
        text = path.read_text(encoding="utf-8", errors="replace")
        keep = text[: text.rfind(torn)]
        if keep and not keep.endswith("\n"):
            keep += "\n"
        with open(path.with_name(path.name + ".torn"), "a", encoding="utf-8") as fh:
            fh.write(torn + "\n")
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(keep)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        warnings.warn(f"{path}: torn last line moved to {path.name}.torn", stacklevel=3)

    def append(self, row: Mapping[str, Any], kind: str = "trial") -> None:
        """Append one finished trial (or the ``end`` record) and fsync before returning.

        If the write fails (``OSError``: a full disk, a read-only filesystem), the file is cut back
        to its size before the call, so no part of the row stays behind, and the error is raised:
        the row is not recorded and ``resume`` runs that trial again."""
        record = {"type": kind, **row, "time": datetime.now(timezone.utc).isoformat(), "machine": machine_load()}
        line = json.dumps(record, sort_keys=True, allow_nan=False) + "\n"
        size = self.path.stat().st_size
        try:
            with open(self.path, "a", encoding="utf-8") as fh:
                fh.write(line)
                fault_point("ledger-write")
                fh.flush()
                os.fsync(fh.fileno())
        except OSError:
            try:
                os.truncate(self.path, size)  # frees what a partial write took: works on a full disk
            except OSError:
                pass  # a torn last line then: moved aside on the next open
            raise
        if kind == "trial":
            fault_point("ledger-append")
            self.rows.append(record)
        else:
            self.end = record
