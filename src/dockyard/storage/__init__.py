"""Adapters of the bytes port (``dockyard.registry.ports.BlobStore``)."""
