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
    "connect",
    "create",
    "hookimpl",
    "hookspec",
    "names",
]
__version__ = "0.1.0"


def connect() -> str:
    """Use the workbench's MLflow store (and Prefect) from Python as the ``itm`` command does: the
    running stack's servers, else ``./.itm``; the MLflow tracking URI (see ``itm_core.ops.stack.connect``)."""
    from itm_core.ops.stack import connect as connect_store

    return connect_store()
