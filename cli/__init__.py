"""The ``itm`` command: above the flows, which it runs, and the core, which it never extends."""
