"""The one family of user errors: a mistake in what the user gave (data, parameters, plugins, models,
the local stack). The ``itm`` command prints such an error as one line that names the file, column,
parameter, plugin or model at fault and what would be accepted; any other exception is a bug and
keeps its traceback.

Each class also derives from the built-in exception its callers have always caught (``ValueError``
for a refused value, ``LookupError`` for something not found), so ``except ValueError`` keeps working.
"""

from __future__ import annotations


class UserError(Exception):
    """Something the user gave is wrong; the message says what, where, and what would be accepted."""


class DataError(UserError, ValueError):
    """Bad input data; the message names the file, column or row at fault."""


class ParamsError(UserError, ValueError):
    """A parameter, option or command-line value that is refused; the message names it and what is accepted."""


class PluginError(UserError):
    """A component that cannot be found, built or trusted; the message names the plugin."""


class ModelError(UserError, LookupError):
    """A model, run, index or checkpoint that cannot be found or used as asked; the message names it."""


class StackError(UserError, RuntimeError):
    """A process of the local stack that did not start or stop; the message names it and its log."""


class OptionsError(PluginError, ValueError):
    """A component's factory refused the options it was given; the message names the component and plugin."""
