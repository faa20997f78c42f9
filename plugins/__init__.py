"""Built-in plugins. Each module is an ``itm`` entry point of this distribution."""
