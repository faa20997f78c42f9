"""The plugin contract: hook specs, component interfaces and output contracts, the plugin manager, the
registry, parameter and error types, and the conformance kit: everything a plugin author reads."""
