"""Who is calling, and what they may do; checked in services after the object is loaded."""

from __future__ import annotations

from dataclasses import dataclass, field

ADMIN_ROLE = "ADMIN"


@dataclass(frozen=True)
class Principal:
    """An authenticated caller: the token subject and its roles."""

    subject: str
    roles: frozenset[str] = field(default_factory=frozenset)
    # Unix time after which the token that authenticated this caller is no longer accepted
    # (its ``exp`` plus the allowed clock skew); None for callers not from a token.
    valid_until: float | None = field(default=None, compare=False)

    def expired(self, now: float) -> bool:
        return self.valid_until is not None and now > self.valid_until

    @property
    def is_admin(self) -> bool:
        return ADMIN_ROLE in self.roles

    def may_manage(self, owner: str) -> bool:
        """Owners and admins may read and change a container."""
        return self.is_admin or owner == self.subject
