"""dockyard's client: push, pull and copy images with resumable uploads and downloads.

An async library on aiohttp that follows the Distribution spec's client rules (the next request
goes to the latest ``Location``; a ``416`` or a lost connection is answered by asking the session
where it stands), used by the ``dockyard push/pull/copy/probe`` commands and by the tests.
"""

from dockyard.client.reference import ImageReference
from dockyard.client.registry import ClientOptions, Registry, RegistryError

__all__ = ["ClientOptions", "ImageReference", "Registry", "RegistryError"]
