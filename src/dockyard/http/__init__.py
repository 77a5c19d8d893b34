"""The HTTP layer: the OCI Distribution protocol over aiohttp."""
