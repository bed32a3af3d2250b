"""One module per modem family. Each registers its Dialect subclass (cgsim.modem.dialect.register)
when imported, and cgsim.modem imports every module in this folder: a fifth family is one file here."""

import importlib
import pkgutil

# The four families cellguard ships for, registered first so they lead every list of names.
_FIRST = ("nrf91", "bg96", "sim7080", "sara_r4")


def load_all() -> None:
    found = sorted(info.name for info in pkgutil.iter_modules(__path__))
    for name in [n for n in _FIRST if n in found] + [n for n in found if n not in _FIRST]:
        importlib.import_module(f"{__name__}.{name}")
