"""The indexer contract: every registered ecosystem's indexer has the base's method
signatures.

Callers (``forage.index.ingest``) call ``package(name, change=...)`` on whichever indexer a
registry has, without knowing which; a subclass that renamed or added a parameter would
break them only at run time, so the signatures are compared here.
"""

from __future__ import annotations

import inspect

import pytest

from indexers import ECOSYSTEMS, Indexer

INDEXERS = [ecosystem.indexer for ecosystem in ECOSYSTEMS.values()]
CONTRACT = ["start_cursor", "changes", "package", "normalize_name"]


@pytest.mark.parametrize("cls", INDEXERS, ids=lambda cls: cls.ecosystem)
@pytest.mark.parametrize("method", CONTRACT)
def test_indexer_methods_have_the_base_signature(cls: type[Indexer[object]], method: str) -> None:
    """Same parameter names, kinds and defaults as :class:`Indexer` (annotations aside)."""

    def shape(function: object) -> list[tuple[str, object, object]]:
        signature = inspect.signature(function)  # type: ignore[arg-type]
        return [(p.name, p.kind, p.default) for p in signature.parameters.values()]

    assert shape(getattr(cls, method)) == shape(getattr(Indexer, method))


def test_package_takes_the_feed_change_as_its_only_option() -> None:
    """``change`` is keyword-only and optional, so ``package(name)`` still works."""
    parameters = inspect.signature(Indexer.package).parameters
    assert list(parameters) == ["self", "name", "change"]
    assert parameters["change"].kind is inspect.Parameter.KEYWORD_ONLY
    assert parameters["change"].default is None
