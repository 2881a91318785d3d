"""Names a package re-exports from its modules, imported on first use (PEP 562), so that importing the package (and
the parsers of the command line) stays light."""

import importlib
import sys


def lazy_exports(package: str, table: dict[str, str]):
    """A module `__getattr__` for `package` that imports `table[name]` (a module of the package) when `name` is first
    asked for, and keeps the value in the package's namespace."""

    def __getattr__(name: str):
        if name in table:
            value = getattr(importlib.import_module(f".{table[name]}", package), name)
            setattr(sys.modules[package], name, value)
            return value
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__
