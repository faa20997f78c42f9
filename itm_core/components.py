"""The documented import path ``itm_core.components`` for plugin authors: the module itself lives in
:mod:`itm_core.contract.components`, and this name is that same module object."""

import sys
from typing import TYPE_CHECKING

from itm_core.contract import components

if TYPE_CHECKING:  # what a type checker reads under this name
    from itm_core.contract.components import *  # noqa: F403

sys.modules[__name__] = components
