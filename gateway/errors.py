"""The errors a user can see. Each docstring is the meaning; each message is stable."""

from __future__ import annotations

from dataclasses import dataclass


class MailgateError(Exception):
    """Base of every expected failure; the CLI prints it as ``mailgate: ...`` without a traceback."""


@dataclass(frozen=True)
class Problem:
    """One thing wrong in a configuration file: where, what was found, what was expected."""

    source: str
    key: str
    found: str
    expected: str

    def __str__(self) -> str:
        return f"{self.source}: {self.key}: found {self.found}, expected {self.expected}"


class ConfigError(MailgateError):
    """The configuration is not valid; `problems` lists every problem found at once."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


class SecretError(MailgateError):
    """A secret (password, token) could not be read; the message names where, never the value."""


class UsageError(MailgateError):
    """The command line or environment does not say enough to start; exit status 2."""
