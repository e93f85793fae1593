"""Task records in SQLite, so they survive a scheduler restart."""

from __future__ import annotations

import dataclasses
import functools
import json
import operator
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from ai_platform.core.errors import NO_SPACE, InsufficientStorage, no_space
from scheduler_svc.tasks import MetricPoint, Resources, Task, TaskStatus

_COLUMNS = [f.name for f in dataclasses.fields(Task)]
_JSON = {"params", "resources", "result", "progress", "effective_params"}
# An upsert: a record saved again (each change of state) is updated in place, not deleted and inserted anew.
_SAVE = (f"INSERT INTO tasks ({','.join(_COLUMNS)}) VALUES ({','.join('?' * len(_COLUMNS))}) ON CONFLICT(id) DO "
         f"UPDATE SET {','.join(f'{c}=excluded.{c}' for c in _COLUMNS if c != 'id')}")
_VALUES = operator.attrgetter(*_COLUMNS)
_AS_JSON = [i for i, name in enumerate(_COLUMNS) if name in _JSON and name != "resources"]
_RESOURCES, _STATUS = _COLUMNS.index("resources"), _COLUMNS.index("status")
MAX_METRIC_POINTS = 100_000  # per task: the first ones are kept, later ones counted in metrics_dropped
MAX_METRIC_SERIES = 100  # per task: points of a further series are dropped
T = TypeVar("T")


def _full(exc: sqlite3.Error) -> InsufficientStorage:
    return InsufficientStorage(f"scheduler_svc: {NO_SPACE} for the task records ({exc}); tasks already recorded "
                               f"are kept, and submitting works again once space is freed")


def guarded(method: Callable[..., T]) -> Callable[..., T]:
    """A write that a full disk refuses raises InsufficientStorage, which the scheduler turns into a clear answer."""

    @functools.wraps(method)
    def guarded(*args: Any, **kwargs: Any) -> T:
        try:
            return method(*args, **kwargs)
        except sqlite3.OperationalError as exc:
            if no_space(exc) or "disk i/o error" in str(exc).lower():
                raise _full(exc) from exc
            raise

    return guarded


class TaskStore:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.db = sqlite3.connect(path, isolation_level=None)
        path.chmod(0o600)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS tasks (id TEXT PRIMARY KEY, name TEXT, script TEXT, input TEXT, output TEXT,"
            " resolved_input TEXT, resolved_output TEXT, params TEXT, resources TEXT, timeout_s REAL, backend TEXT,"
            " status TEXT, created_at REAL, started_at REAL, completed_at REAL, result TEXT, error_type TEXT,"
            " error_message TEXT, progress TEXT, pid INTEGER, job_id TEXT, log_dropped INTEGER, report_secret TEXT,"
            " metrics_dropped INTEGER, input_table TEXT, input_version INTEGER)"
        )
        present = {row[1] for row in self.db.execute("PRAGMA table_info(tasks)")}
        for column, kind in (("report_secret", "TEXT DEFAULT ''"), ("metrics_dropped", "INTEGER DEFAULT 0"),
                             ("input_table", "TEXT DEFAULT ''"), ("input_version", "INTEGER DEFAULT 0"),
                             ("owner", "TEXT DEFAULT ''"), ("output_table", "TEXT DEFAULT ''"),
                             ("effective_params", "TEXT")):
            if column not in present:  # records written before the column existed
                self.db.execute(f"ALTER TABLE tasks ADD COLUMN {column} {kind}")
        # Tasks prove themselves with signed credentials now; secrets that older versions stored in plain text go.
        self.db.execute("UPDATE tasks SET report_secret = '' WHERE report_secret != ''")
        self.db.execute("CREATE TABLE IF NOT EXISTS metrics (seq INTEGER PRIMARY KEY, task_id TEXT, key TEXT,"
                        " step INTEGER, value REAL, time REAL)")
        self.db.execute("CREATE INDEX IF NOT EXISTS metrics_task ON metrics (task_id, seq)")
        self.db.execute("CREATE INDEX IF NOT EXISTS tasks_created ON tasks (created_at DESC)")

    @guarded
    def save(self, task: Task) -> None:
        values = list(_VALUES(task))
        for i in _AS_JSON:
            values[i] = json.dumps(values[i])
        values[_RESOURCES] = json.dumps(vars(values[_RESOURCES]))  # Resources is flat: its fields are its __dict__
        values[_STATUS] = values[_STATUS].value
        self.db.execute(_SAVE, values)

    def _task(self, row: tuple) -> Task:
        values = dict(zip(_COLUMNS, row, strict=True))
        for name in _JSON:
            values[name] = json.loads(values[name]) if values[name] is not None else None
        values["resources"] = Resources(**values["resources"])
        values["status"] = TaskStatus(values["status"])
        return Task(**values)

    def get(self, task_id: str) -> Task | None:
        row = self.db.execute(f"SELECT {','.join(_COLUMNS)} FROM tasks WHERE id = ?", (task_id,)).fetchone()
        return self._task(row) if row else None

    def list(
        self, statuses: list[TaskStatus] | None = None, name: str = "", limit: int = 50,
        after: tuple[float, str] | None = None, owner: str = "",
    ) -> list[Task]:
        """Newest first (then by id); ``after``: the (created_at, id) where the previous page ended."""
        where, args = [], []
        if owner:
            where.append("owner = ?")
            args.append(owner)
        if after is not None:
            where.append("(created_at < ? OR (created_at = ? AND id > ?))")
            args += [after[0], after[0], after[1]]
        if statuses:
            where.append(f"status IN ({','.join('?' * len(statuses))})")
            args += [str(s) for s in statuses]
        if name:
            where.append("name = ?")
            args.append(name)
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        rows = self.db.execute(
            f"SELECT {','.join(_COLUMNS)} FROM tasks {clause} ORDER BY created_at DESC, id LIMIT ?",
            [*args, limit],
        ).fetchall()
        return [self._task(r) for r in rows]

    def unfinished(self) -> list[Task]:
        return self.list([TaskStatus.PENDING, TaskStatus.RUNNING], limit=1_000_000)[::-1]

    @guarded
    def add_metrics(self, task_id: str, points: list[MetricPoint]) -> int:
        """Keep what fits under the task's caps; returns how many points were dropped."""
        count, = self.db.execute("SELECT COUNT(*) FROM metrics WHERE task_id = ?", (task_id,)).fetchone()
        keys = {k for k, in self.db.execute("SELECT DISTINCT key FROM metrics WHERE task_id = ?", (task_id,))}
        kept = []
        for point in points:
            if count + len(kept) >= MAX_METRIC_POINTS:
                break
            if point.key not in keys:
                if len(keys) >= MAX_METRIC_SERIES:
                    continue
                keys.add(point.key)
            kept.append(point)
        self.db.execute("BEGIN")  # one transaction for the batch, not one per point
        try:
            self.db.executemany("INSERT INTO metrics (task_id, key, step, value, time) VALUES (?, ?, ?, ?, ?)",
                                [(task_id, p.key, p.step, p.value, p.time) for p in kept])
            self.db.execute("COMMIT")
        except BaseException:
            if self.db.in_transaction:  # a COMMIT a full disk refused leaves the transaction open
                self.db.execute("ROLLBACK")
            raise
        return len(points) - len(kept)

    def metrics(self, task_id: str, after: int = 0) -> tuple[list[MetricPoint], int]:
        """Points stored after sequence number ``after`` (oldest first), and the last sequence number."""
        rows = self.db.execute("SELECT seq, key, step, value, time FROM metrics WHERE task_id = ? AND seq > ?"
                               " ORDER BY seq", (task_id, after)).fetchall()
        return [MetricPoint(k, s, v, t) for _, k, s, v, t in rows], (rows[-1][0] if rows else after)

    def close(self) -> None:
        self.db.close()
