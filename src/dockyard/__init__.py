"""dockyard: an OCI Distribution registry."""

__version__ = "0.1.0"
