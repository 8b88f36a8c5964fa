"""The asyncio shells' parts: runtime, UDP, netlink, scripts, the control socket, sd_notify,
metrics.

Importing any of them first makes ``pyroute2`` a light package (:func:`_light_pyroute2`), so
that whichever shell module imports a part of pyroute2 first (netif, linkwatch, netbatch), the
rest of the library is not loaded with it.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from typing import Any


def _light_pyroute2() -> None:
    """Let the daemons import only the parts of pyroute2 they use.

    ``pyroute2/__init__.py`` imports the whole library (NDB with sqlite, IPDB, conntrack,
    ethtool, ...): about 5 MB of RSS and 0.1-0.4 s of start-up a daemon never uses. The package
    module is created without running it, and runs it only when a name that is not a submodule
    is asked of it (``from pyroute2 import NDB`` elsewhere in the process still works).
    """
    if "pyroute2" in sys.modules:
        return
    spec = importlib.util.find_spec("pyroute2")
    if spec is None or spec.loader is None:
        return
    module = importlib.util.module_from_spec(spec)
    loader = spec.loader

    def __getattr__(name: str) -> Any:
        try:
            return importlib.import_module(f"pyroute2.{name}")
        except ModuleNotFoundError:
            pass
        del module.__getattr__  # the real package from now on
        loader.exec_module(module)
        return getattr(module, name)

    module.__getattr__ = __getattr__  # type: ignore[method-assign]
    sys.modules["pyroute2"] = module


_light_pyroute2()
