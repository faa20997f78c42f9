"""The plugin contract: hook specs, component interfaces and output contracts, the plugin manager, the registry and the conformance kit."""
