"""What the command-line tools share: logging to the terminal and one exit path for user errors."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from scn.errors import UserError

log = logging.getLogger("scn")


def run_cli(fn: Callable[..., Any], *args: Any) -> int:
    """Call `fn`; a UserError becomes one readable line and exit code 2 instead of a traceback."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        fn(*args)
    except UserError as e:
        log.error("%s", e)
        return 2
    return 0
