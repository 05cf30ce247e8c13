"""The exception types for bad user input, and ``require``, the one helper that raises them.

Every message follows the template "`<argument or file>` <rule>, got <value>. <how to fix>."
The ``tdseg`` command prints such an error as one line and exits with status 2; library callers
can catch it as a ``ValueError``::

    require(self.width >= 1, "LabelAEConfig.width", "must be >= 1", self.width, "Use e.g. 32.")
"""

from __future__ import annotations

from typing import Any

__all__ = ["ConfigError", "UserInputError", "require"]

#: longest value representation shown in a message (longer ones are cut with "...")
MAX_VALUE_CHARS = 80


class UserInputError(ValueError):
    """Bad input from a user (path, dataset, parameter, prompt); the message explains the fix."""


class ConfigError(UserInputError):
    """A configuration value or key that breaks a rule; the message says which and how to fix it."""


def require(ok: Any, where: str, rule: str, value: Any, fix: str, error: type[UserInputError] = ConfigError) -> None:
    """Raise ``error("`where` rule, got value. fix")`` (one line) unless ``ok``.

    Args:
        ok: the condition that must hold.
        where: the argument, field (``"DataConfig.spacing"``) or file the rule is about.
        rule: what must hold, e.g. ``"must be >= 1"``.
        value: the offending value (shown with ``repr``, cut to ``MAX_VALUE_CHARS``).
        fix: how to fix it, e.g. ``"Use e.g. 32."``.
        error: the exception type (``ConfigError`` for config fields, ``UserInputError`` otherwise).
    """
    if ok:
        return
    shown = repr(value)
    shown = shown if len(shown) <= MAX_VALUE_CHARS else shown[: MAX_VALUE_CHARS - 3] + "..."
    raise error(f"`{where}` {rule}, got {shown}. {fix}".replace("\n", " "))
