"""One exception type for problems the user can fix (bad paths, files, configs)."""

from __future__ import annotations


class UserError(Exception):
    """Raised with a message that names the offending file, line or key and says how to fix it."""
