"""A package's public names, imported from their home modules on first use (PEP 562's module ``__getattr__``).

Boundary: ``memory``, ``serving`` and ``export`` list where each of their names lives; this module turns that list
into the package's ``__getattr__``, ``__dir__`` and ``__all__``, so importing the package imports nothing heavy.
"""

from __future__ import annotations

import importlib
import sys


def lazy_names(package: str, homes: dict[str, tuple[str, ...]]):
    """(__getattr__, __dir__, __all__) for ``package``, whose names live in ``homes`` ({module: names})."""
    where = {name: module for module, names in homes.items() for name in names}
    namespace = vars(sys.modules[package])
    public = sorted(where)

    def __getattr__(name: str):
        if name not in where:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(where[name]), name)
        namespace[name] = value  # later lookups skip this function
        return value

    def __dir__() -> list[str]:
        return sorted(list(namespace) + public)

    return __getattr__, __dir__, public
