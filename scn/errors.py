"""One exception type for problems the user can fix (bad paths, files, configs)."""

from __future__ import annotations


class UserError(Exception):
    """Raised with a message that names the offending file, line or key and says how to fix it."""


class JobFailed(BaseException):
    """Ends `python run.py` with `code` after `message` is printed once (see scn.cli.hydra_cli).
    A BaseException, so Hydra's job and error handlers pass it up instead of printing a traceback
    and its HYDRA_FULL_ERROR hint, and a multirun with continue_on_error=false stops at once."""

    def __init__(self, message: str, code: int):
        super().__init__(message)
        self.message, self.code = message, code
