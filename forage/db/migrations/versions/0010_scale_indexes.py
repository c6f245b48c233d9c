"""Indexes the scheduler's periodic work needs at ten million artifacts.

Each one turns a query that read a whole table on every run into index probes
(``tests/forage/test_query_plans.py`` shows the plans; ``scripts/bench_tasks.py`` times them):

- ``archives (status, id)``: the reverify sample (lowest and highest archived id, a bounded
  count, a probe per pick), archives by status for ``/metrics`` and ``stats``;
- ``jobs (dedup_key, state)``: "is a job for this key queued, running or dead?", asked by
  every scheduled task that enqueues and by ``drain_archives`` once per candidate artifact;
  the unique index on ``dedup_key`` covers queued jobs only, so the databases walked every
  job in those states instead;
- ``jobs (state, finished_at)``: ``prune_jobs`` (done jobs finished before a cutoff) and
  ``retry_failed`` (dead jobs, oldest first) read the jobs they act on, not every done or
  dead job kept.

Revision ID: 0010
Revises: 0009
"""

from __future__ import annotations

from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

#: Name, table and columns of each index (names as the models' naming convention derives).
INDEXES = (
    ("ix_archives_status_id", "archives", ["status", "id"]),
    ("ix_jobs_dedup_key_state", "jobs", ["dedup_key", "state"]),
    ("ix_jobs_state_finished_at", "jobs", ["state", "finished_at"]),
)


def upgrade() -> None:
    for name, table, columns in INDEXES:
        op.create_index(name, table, columns)


def downgrade() -> None:
    for name, table, _columns in INDEXES:
        op.drop_index(name, table_name=table)
