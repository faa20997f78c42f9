"""An example ITM workbench plugin. The components live in :mod:`itm_plugin_example.plugin`."""

__version__ = "0.1.0"
