"""Each package's ``__init__`` is its public face: ``__all__`` lists exactly what it offers."""

from __future__ import annotations

import importlib
import pkgutil

import pytest

import aimesh

PACKAGES = sorted(
    m.name
    for m in pkgutil.iter_modules(aimesh.__path__, "aimesh.")
    if m.ispkg and m.name != "aimesh.cli"
)


def test_the_packages_we_expect_exist() -> None:
    assert {"aimesh.bus", "aimesh.protocol", "aimesh.registry", "aimesh.runtimes"} <= set(PACKAGES)


@pytest.mark.parametrize("name", PACKAGES)
def test_public_face_declares_all_and_exports_it(name: str) -> None:
    module = importlib.import_module(name)
    exported = getattr(module, "__all__", None)
    assert exported is not None, f"{name} has no __all__"
    assert sorted(exported) == sorted(set(exported)), f"{name}.__all__ has duplicates"
    for member in exported:
        assert not member.startswith("_"), f"{name} exports private {member}"
        assert hasattr(module, member), f"{name}.__all__ names {member}, which it lacks"
