"""The public surfaces of ``storage`` and ``indexers`` are deliberate: every name listed in
``__all__`` exists, the list is sorted, and every public class or function defined in the
package's modules and re-exported is listed (so an API change shows up in review)."""

from __future__ import annotations

import importlib

import pytest


@pytest.mark.parametrize("package", ["storage", "indexers"])
def test_all_names_exist_and_are_sorted(package: str) -> None:
    module = importlib.import_module(package)
    assert module.__all__ == sorted(module.__all__)
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
