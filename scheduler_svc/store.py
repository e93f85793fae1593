"""Task records in SQLite, so they survive a scheduler restart."""

from __future__ import annotations

import dataclasses
import json
import sqlite3
from pathlib import Path

from scheduler_svc.tasks import Resources, Task, TaskStatus

_COLUMNS = [f.name for f in dataclasses.fields(Task)]
_JSON = {"params", "resources", "result", "progress"}


class TaskStore:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(path, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS tasks (id TEXT PRIMARY KEY, name TEXT, script TEXT, input TEXT, output TEXT,"
            " resolved_input TEXT, resolved_output TEXT, params TEXT, resources TEXT, timeout_s REAL, backend TEXT,"
            " status TEXT, created_at REAL, started_at REAL, completed_at REAL, result TEXT, error_type TEXT,"
            " error_message TEXT, progress TEXT, pid INTEGER, job_id TEXT, log_dropped INTEGER, report_secret TEXT)"
        )
        present = {row[1] for row in self.db.execute("PRAGMA table_info(tasks)")}
        for column in ("report_secret",):  # records written before the column existed
            if column not in present:
                self.db.execute(f"ALTER TABLE tasks ADD COLUMN {column} TEXT DEFAULT ''")
        self.db.execute("CREATE INDEX IF NOT EXISTS tasks_created ON tasks (created_at DESC)")

    def save(self, task: Task) -> None:
        values = []
        for name in _COLUMNS:
            value = getattr(task, name)
            if name == "resources":
                value = dataclasses.asdict(value)
            values.append(json.dumps(value) if name in _JSON else str(value) if name == "status" else value)
        placeholders = ",".join("?" * len(_COLUMNS))
        self.db.execute(f"INSERT OR REPLACE INTO tasks ({','.join(_COLUMNS)}) VALUES ({placeholders})", values)

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
        self, statuses: list[TaskStatus] | None = None, name: str = "", limit: int = 50, offset: int = 0
    ) -> list[Task]:
        where, args = [], []
        if statuses:
            where.append(f"status IN ({','.join('?' * len(statuses))})")
            args += [str(s) for s in statuses]
        if name:
            where.append("name = ?")
            args.append(name)
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        rows = self.db.execute(
            f"SELECT {','.join(_COLUMNS)} FROM tasks {clause} ORDER BY created_at DESC, id LIMIT ? OFFSET ?",
            [*args, limit, offset],
        ).fetchall()
        return [self._task(r) for r in rows]

    def unfinished(self) -> list[Task]:
        return self.list([TaskStatus.PENDING, TaskStatus.RUNNING], limit=1_000_000)[::-1]

    def close(self) -> None:
        self.db.close()
