"""The listing an ecosystem serves when its upstream fails (issue 16, criterion 1).

The last good document the upstream gave (:mod:`indexers.mirror.documents`), filtered by what
the archive holds and what the registry removed, is closer to what clients saw than anything
rebuilt from the index: descriptions, dependency fields and checksums come as the registry
wrote them. Each ecosystem renders one of the two from the index's rows; this module owns
what they share: the index stamp, the kept document's stamp and the cooldown's minute as the
cache key, so a listing is rendered once per change of any of them, and the same bytes answer
a document and its digest files.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Hashable
from datetime import datetime
from typing import TYPE_CHECKING

from indexers.mirror.rows import PackageRows

if TYPE_CHECKING:
    from indexers.mirror.registry import EcosystemRoutes

#: ``render(rows, kept, cutoff)``: the listing of ``rows`` from the kept document (``None``:
#: none kept) for a cooldown ``cutoff``; ``None`` or empty when there is nothing to list.
Render = Callable[[PackageRows, bytes | None, datetime | None], Awaitable[bytes | None]]


async def outage_listing(
    routes: EcosystemRoutes, name: str, *, url: str, variant: Hashable, render: Render
) -> bytes | None:
    """The listing of ``name`` (in its form ``variant``) without the upstream: ``render`` of
    the index's rows and the last good document kept for ``url`` (``None``: an unknown
    package, or nothing to list)."""
    registry = routes.registry
    archive = routes.mirror.archive
    ecosystem = routes.ecosystem
    stamp = await registry.remembered(
        ("stamp", name), lambda: archive.package_stamp(ecosystem, name)
    )
    if stamp is None:
        return None
    cutoff = registry.cutoff()
    minute = cutoff.replace(second=0, microsecond=0) if cutoff else None
    kept = registry.last_good.stamp(url)
    key = ("outage-listing", name, variant, stamp, minute, kept)
    cached = registry.rendered.fresh(key)
    if cached is not None:
        return cached.value or None
    rows = await archive.package_rows(ecosystem, name)
    body = b""
    if rows is not None:
        document = await registry.last_good.read(url) if kept is not None else None
        body = await render(rows, document, minute) or b""
    registry.rendered.put(key, body)
    return body or None


def kept_versions(rows: PackageRows) -> frozenset[str]:
    """The versions a filtered document may offer: those with an archived file the registry
    has not removed."""
    return frozenset(file.version for file in rows.listed_files())


__all__ = ["Render", "kept_versions", "outage_listing"]
