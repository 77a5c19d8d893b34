"""Access rules: which actions (pull, push, delete) an identity has on a repository."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from dockyard.config import AccessRule, AuthSettings


ACTIONS = ("pull", "push", "delete")
ALL = frozenset(ACTIONS)


@dataclass(frozen=True)
class Identity:
    """An authenticated client: a user name (from htpasswd, a token's ``sub`` or a cert's CN)."""

    name: str
    groups: frozenset[str] = field(default_factory=frozenset)
    via: str = "password"  # password, token or certificate


@lru_cache(maxsize=1024)
def _pattern(glob: str) -> re.Pattern[str]:
    out = []
    i = 0
    while i < len(glob):
        if glob.startswith("**", i):
            out.append(".*")
            i += 2
        elif glob[i] == "*":
            out.append("[^/]*")
            i += 1
        else:
            out.append(re.escape(glob[i]))
            i += 1
    return re.compile("".join(out))


def matches(glob: str, repository: str) -> bool:
    return _pattern(glob).fullmatch(repository) is not None


class AccessPolicy:
    """Grants from the rules add up; admins may do everything; with no rules, every
    authenticated user may do everything and anonymous clients nothing."""

    def __init__(self, settings: AuthSettings) -> None:
        self._rules: list[AccessRule] | None = settings.access
        self._admins = frozenset(settings.admins)
        self._groups: dict[str, frozenset[str]] = {}
        for group, members in settings.groups.items():
            for member in members:
                self._groups[member] = self._groups.get(member, frozenset()) | {group}

    def identify(self, name: str, via: str) -> Identity:
        return Identity(name, self._groups.get(name, frozenset()), via)

    def is_admin(self, identity: Identity) -> bool:
        """An administrator: named in ``admins``, or anyone authenticated when there are no rules."""
        return identity.name in self._admins or self._rules is None

    def actions(self, identity: Identity | None, repository: str) -> frozenset[str]:
        if identity is not None and identity.name in self._admins:
            return ALL
        if self._rules is None:
            return ALL if identity is not None else frozenset()
        granted: set[str] = set()
        for rule in self._rules:
            if not matches(rule.repository, repository):
                continue
            for action in ACTIONS:
                if any(_subject_matches(s, identity) for s in getattr(rule, action)):
                    granted.add(action)
        return frozenset(granted)


def _subject_matches(subject: str, identity: Identity | None) -> bool:
    if subject == "*":
        return True
    if subject == "anonymous":
        return identity is None
    if identity is None:
        return False
    if subject == "authenticated":
        return True
    if subject.startswith("group:"):
        return subject[6:] in identity.groups
    return subject == identity.name
