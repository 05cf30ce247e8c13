"""The one exception type for bad user input.

Every message follows the template "`<argument or file>` <rule>, got <value>. <how to fix>."
The ``tdseg`` command prints such an error as one line and exits with status 2; library callers
can catch it as a ``ValueError``.
"""

from __future__ import annotations

__all__ = ["UserInputError"]


class UserInputError(ValueError):
    """Bad input from a user (path, dataset, parameter, prompt); the message explains the fix."""
