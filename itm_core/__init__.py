"""ITM workbench core: the plugin contract, data, encoding, retrieval, training and tracking."""

from itm_core.contract.components import ContractError
from itm_core.contract.hookspecs import hookimpl, hookspec
from itm_core.contract.registry import RegistryError, create, names
from itm_core.errors import DataError, ModelError, OptionsError, ParamsError, PluginError, UserError

__all__ = [
    "ContractError",
    "DataError",
    "ModelError",
    "OptionsError",
    "ParamsError",
    "PluginError",
    "RegistryError",
    "UserError",
    "create",
    "hookimpl",
    "hookspec",
    "names",
]
__version__ = "0.1.0"
