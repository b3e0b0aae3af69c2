"""modelfleet core: catalog, settings, stores and the plain logic the shells wrap."""
