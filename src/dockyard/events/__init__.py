"""Events and replication: what the outbox (metadata/outbox.py) holds goes to HTTP sinks and
replication targets, at least once, across crashes, restarts and nodes (docs/events.md)."""

EVENT_TYPES = (
    "manifest.pushed",
    "manifest.deleted",
    "tag.deleted",
    "repository.deleted",
    "blob.mounted",
    "manifest.pulled",
)
