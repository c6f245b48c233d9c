"""The job kinds a production worker runs, and their handlers.

:func:`default_handlers` maps each job kind (``"sync_package"``, ``"archive"``, ...) to an
``async def handler(ctx: JobContext, job: Job) -> None`` (see :mod:`forage.jobs.worker` for the
context and :mod:`forage.jobs.queue` for the contract: ids in payloads, idempotent, safe after a
kill). ``forage worker`` uses this mapping unless ``--handlers MODULE:FUNCTION`` names another.
The pipeline's handlers are registered here as they are written.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from forage.jobs.worker import Handler


def default_handlers() -> Mapping[str, Handler]:
    """Every job kind Forage knows, mapped to its handler (wrapped so that its log lines
    name the job: :func:`forage.logs.with_job_context`)."""
    from forage.archive.job import archive_job
    from forage.filecoin.deals import SYNC_DEALS, sync_deals_job
    from forage.filecoin.pieces import BUILD_PIECES, build_pieces_job
    from forage.index.ingest import ARCHIVE, IMPORT, import_job
    from forage.index.reconcile import RECONCILE, reconcile_job
    from forage.jobs.scheduler import scheduled_handlers
    from forage.logs import with_job_context
    from forage.lookup.answers import RENDER_ANSWERS, render_answers_job
    from forage.pins.check import pin_check_job
    from forage.pins.kinds import PIN, PIN_CHECK
    from forage.pins.pin import pin_job

    handlers = {IMPORT: import_job, ARCHIVE: archive_job, PIN: pin_job, PIN_CHECK: pin_check_job}
    handlers.update({BUILD_PIECES: build_pieces_job, SYNC_DEALS: sync_deals_job})
    handlers[RENDER_ANSWERS] = render_answers_job
    handlers[RECONCILE] = reconcile_job
    handlers.update(scheduled_handlers())
    return {kind: with_job_context(handler) for kind, handler in handlers.items()}
