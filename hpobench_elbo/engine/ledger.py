"""The ledger: an append-only JSONL journal per cell, the single source of truth for results.

This docstring is the one place the schema is documented. Current version: 3. One JSON object
per line:

* line 1, ``{"type": "header", ...}``: ``schema``, ``suite``, ``suite_hash``, ``cell`` (task,
  scale, method, options, seed, budget, clock, refit, cache, label), ``seeds`` (the named child
  seeds), ``versions`` (python and key packages), ``git_sha``, ``device``, ``clock``, ``unit``,
  ``threads``, ``determinism``, ``metric``, ``direction`` (of the task's test metric), ``created``;
  since version 2: ``recipe`` (the task's training recipe, ``contracts.Recipe``; null for a task
  that trains nothing), ``validation`` (the method's: ``selection``, ``hypergradient``, ``none``)
  and ``data_use`` (what data the method trained and selected on, in words).
* then one ``{"type": "trial", ...}`` line per finished trial (any status), fsynced: the
  ``TrialResult`` fields (``trial_id``, ``kind``, ``config``, ``tuner``, ``data``, ``status``,
  ``cost`` per phase, ``steps``, ``planned_steps``, ``score``, ``score_name``, ``metrics``,
  ``test``, ``trajectory``, ``cache_hits``, ``cache_misses``, ``cost_saved``, ``cache_keys``,
  ``overshoot``, ``n_train``, ``error``; since version 3 ``stage_costs``: the true cost of each
  pipeline stage the trial computed or read, in order), plus ``recommendation`` (the trial the method would deploy
  after this one), ``spent`` (cumulative charged cost), ``meter`` (cumulative cost per phase, so a
  resume restores the meter exactly), ``unit`` and ``time`` (ISO timestamp, informative). A refit
  row also carries ``stop_reason``.
* last, once the cell has finished, ``{"type": "end", "reason": ..., "spent": ..., "recommendation":
  ..., "overshoot": ..., "meter": ...}``.

Versions: each change bumps :data:`SCHEMA_VERSION`; new fields are optional and :func:`migrate`
brings every older version to the current one on read, so committed ledgers stay readable.

* 1 -> 2: the header gains ``recipe``, ``validation`` and ``data_use`` (read as null / "unknown").
* 2 -> 3: trial rows gain ``stage_costs`` (read as ``{}``: older rows tell no prefix).

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
from typing import Any

from hpobench_elbo.engine.faults import fault_point
from hpobench_elbo.errors import LedgerError

SCHEMA_VERSION = 3
KNOWN_VERSIONS = (1, 2, 3)


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


def _parse(path: Path, text: str) -> LedgerContents:
    lines = text.split("\n")
    complete, tail = lines[:-1], lines[-1]  # ``tail`` is what follows the last newline
    objects: list[dict[str, Any]] = []
    torn: str | None = None
    for number, line in enumerate(complete, start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
            if not isinstance(obj, dict) or "type" not in obj:
                raise ValueError("not a ledger record")
        except ValueError as exc:
            if number == len(complete) and not tail:
                torn = line
                break
            raise LedgerError(f"{path}:{number}: damaged ledger line ({exc}); fix or delete the file") from None
        objects.append(obj)
    if tail.strip():
        try:
            obj = json.loads(tail)
            if not isinstance(obj, dict) or "type" not in obj:
                raise ValueError("not a ledger record")
            objects.append(obj)  # complete record missing only its newline
        except ValueError:
            torn = tail
    if not objects or objects[0].get("type") != "header":
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
    """Read a ledger without changing it (a torn last line is reported, not moved)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise LedgerError(f"{path}: no such ledger") from None
    return _parse(path, text)


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

        An existing ledger whose ``suite_hash`` or cell differs is refused unless ``force``.
        """
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists() and path.stat().st_size > 0 and b"\n" not in path.read_bytes():
            cls._move_torn(path, path.read_text(encoding="utf-8", errors="replace"))  # a torn header line
        if not path.exists() or path.stat().st_size == 0:
            full = {"type": "header", "schema": SCHEMA_VERSION, **header,
                    "created": datetime.now(timezone.utc).isoformat()}
            with open(path, "w", encoding="utf-8") as fh:
                fh.write(json.dumps(full, sort_keys=True) + "\n")
                fh.flush()
                os.fsync(fh.fileno())
            return cls(path, full, [])
        contents = read_ledger(path)
        if contents.torn is not None:
            cls._move_torn(path, contents.torn)
        existing = contents.header
        if existing.get("cell") != header.get("cell"):
            raise LedgerError(f"{path}: ledger belongs to another cell; use another output directory")
        if existing.get("suite_hash") != header.get("suite_hash") and not force:
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
        """Append one finished trial (or the ``end`` record) and fsync before returning."""
        record = {"type": kind, **row, "time": datetime.now(timezone.utc).isoformat()}
        line = json.dumps(record, sort_keys=True, allow_nan=False) + "\n"
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(line)
            fault_point("ledger-write")
            fh.flush()
            os.fsync(fh.fileno())
        if kind == "trial":
            fault_point("ledger-append")
            self.rows.append(record)
        else:
            self.end = record
