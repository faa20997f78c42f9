"""The documented import path ``itm_core.testing`` for plugin authors: the module itself lives in
:mod:`itm_core.contract.testing`, and this name is that same module object."""

import sys

from itm_core.contract import testing

sys.modules[__name__] = testing
