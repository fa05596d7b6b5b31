"""The public surface: what users and third-party sinks import, listed once and sorted."""

from __future__ import annotations

import types

import pytest

import distwal
import distwal.sinks


@pytest.mark.parametrize("module", [distwal, distwal.sinks], ids=lambda m: m.__name__)
def test_all_is_sorted_and_names_only_what_exists(module: types.ModuleType) -> None:
    assert module.__all__ == sorted(module.__all__)
    missing = [name for name in module.__all__ if not hasattr(module, name)]
    assert missing == []


@pytest.mark.parametrize("module", [distwal, distwal.sinks], ids=lambda m: m.__name__)
def test_all_lists_every_public_name_defined_or_imported(module: types.ModuleType) -> None:
    public = {
        name
        for name, value in vars(module).items()
        if not name.startswith("_")
        and not isinstance(value, types.ModuleType)  # submodules are reached by import, not listed
        and name != "annotations"
    }
    assert public - set(module.__all__) == set()


def test_every_sink_error_is_public_for_third_party_sinks() -> None:
    errors = {cls.__name__ for cls in _subclasses(distwal.SinkError)} | {"SinkError"}
    assert errors <= set(distwal.sinks.__all__)
    assert errors <= set(distwal.__all__)


def _subclasses(cls: type) -> set[type]:
    found = set()
    for sub in cls.__subclasses__():
        found |= {sub} | _subclasses(sub)
    return found
