"""The documented import path ``itm_core.components`` for plugin authors: the module itself lives in
:mod:`itm_core.contract.components`, and this name is that same module object."""

import sys

from itm_core.contract import components

sys.modules[__name__] = components
