"""ITM workbench core: the plugin contract, data, encoding, retrieval, training and tracking."""

from itm_core.components import ContractError
from itm_core.hookspecs import hookimpl, hookspec
from itm_core.registry import RegistryError, create, names

__all__ = ["ContractError", "RegistryError", "create", "hookimpl", "hookspec", "names"]
__version__ = "0.1.0"
