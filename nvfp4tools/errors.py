"""The error hierarchy every user-facing failure goes through.

Each class carries the process exit code the CLI returns for it, so a failure is reported
the same way whichever command hit it. Messages say what is wrong, where (file, tensor),
expected versus actual, and, in ``hint``, what to do next.

Exit codes (documented in docs/exit-codes.md):
  0  success
  1  a finding of severity "error" (inspect/verify) or "does not fit" (estimate)
  2  usage error (bad option or value)
  3  input unreadable, malformed or unsupported
  4  environment: a backend or optional extra is missing
  70 internal error (a bug: traceback only with NVFP4TOOLS_DEBUG=1)
  130 interrupted
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_FINDINGS = 1
EXIT_USAGE = 2
EXIT_INPUT = 3
EXIT_ENVIRONMENT = 4
EXIT_INTERNAL = 70
EXIT_INTERRUPTED = 130


class Nvfp4ToolsError(Exception):
    """Base class: a message, an optional next step, and the exit code."""

    exit_code = EXIT_INTERNAL

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def one_line(self) -> str:
        text = f"{type(self).__name__}: {self.message}"
        if self.hint:
            text += f" ({self.hint})"
        return " ".join(text.split())  # one line, whatever the message held


class UsageError(Nvfp4ToolsError):
    """A bad option value that click itself could not catch."""

    exit_code = EXIT_USAGE


class FormatError(Nvfp4ToolsError):
    """The input is malformed: truncated, lying header, wrong shape, missing shard."""

    exit_code = EXIT_INPUT


class UnsupportedError(Nvfp4ToolsError):
    """The input is well formed but uses something we do not read (pickle, unknown scheme)."""

    exit_code = EXIT_INPUT


class UnknownFormatError(Nvfp4ToolsError):
    """No registered reader recognises the path."""

    exit_code = EXIT_INPUT


class NetworkError(Nvfp4ToolsError):
    """A Hub id could not be read: no network, refused, not found, gated, or offline and not cached."""

    exit_code = EXIT_INPUT


class BackendUnavailable(Nvfp4ToolsError):
    """A requested backend or optional extra is not usable here; the message says why."""

    exit_code = EXIT_ENVIRONMENT
