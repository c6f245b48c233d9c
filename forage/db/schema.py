"""The live schema compared with the models: :func:`schema_diff` (``forage db check``).

Apart from :mod:`forage.db.engine` because it needs every table of :mod:`forage.db.models`
registered on ``Base.metadata``, and the models build on the engine module: this module
imports both, neither imports it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy.engine import Engine

import forage.db.models  # noqa: F401  (registers the tables on Base.metadata)
from forage.db.engine import Base, include_object


def schema_diff(engine: Engine) -> Sequence[Any]:
    """Differences between the live schema and the models (empty when they match)."""
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as connection:
        context = MigrationContext.configure(
            connection,
            opts={
                "compare_type": True,
                "include_object": include_object,
                # Also compare CHECK constraints (all ours are named).
                "autogenerate_plugins": [
                    "alembic.autogenerate.*",
                    "alembic.ext.checkconstraint_byname",
                ],
            },
        )
        return list(compare_metadata(context, Base.metadata))
