"""The public surfaces of ``storage`` and ``indexers`` are deliberate: every name listed in
``__all__`` exists, the list is sorted, and every public class or function defined in the
package's modules and re-exported is listed (so an API change shows up in review)."""

from __future__ import annotations

import importlib

import pytest


def _kind(name: str) -> int:
    return 0 if name.isupper() else 1 if name[0].isupper() else 2


@pytest.mark.parametrize("package", ["storage", "indexers"])
def test_all_names_exist_and_are_sorted(package: str) -> None:
    module = importlib.import_module(package)
    # ruff's RUF022 order: CONSTANTS, then Classes, then functions, each alphabetical.
    assert module.__all__ == sorted(module.__all__, key=lambda n: (_kind(n), n))
    missing = [name for name in module.__all__ if not hasattr(module, name)]
    assert missing == []


@pytest.mark.parametrize("package", ["storage", "indexers"])
def test_every_public_attribute_is_listed(package: str) -> None:
    module = importlib.import_module(package)
    public = {
        name
        for name, value in vars(module).items()
        if not name.startswith("_") and getattr(value, "__module__", "").startswith(f"{package}.")
    }
    assert public - set(module.__all__) == set()
