"""Adapters of the facts port (``dockyard.registry.ports.MetadataStore``)."""
