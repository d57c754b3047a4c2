"""What the command-line tools share: logging to the terminal and one exit path for user errors."""

from __future__ import annotations

import atexit
import logging
import os
import sys
import traceback
from collections.abc import Callable
from typing import Any

from scn.errors import JobFailed, UserError

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


def hydra_cli(hydra_main: Callable[[], Any]) -> int:
    """Run a `@hydra.main` function and return the exit status: 2 after one message for a user
    or config error, 1 with the traceback for a bug, 128 + N for a run stopped by signal N (with
    the resume command); a multirun whose jobs failed lists them and returns 1."""
    from hydra.errors import CompactHydraException

    from scn.sweep import failed_jobs

    _join_torchrun_job()
    full_error = os.environ.get("HYDRA_FULL_ERROR") == "1"
    # Hydra then re-raises what fails outside a job (config composition, sweepers) instead of
    # printing it with a hint and exiting 1; jobs report their own failures through JobFailed
    os.environ["HYDRA_FULL_ERROR"] = "1"
    code, message = 0, ""
    try:
        hydra_main()
    except JobFailed as e:
        code, message = e.code, e.message
        if full_error and e.__cause__ is not None and e.code == 2:
            message = "".join(traceback.format_exception(e.__cause__))
    except CompactHydraException as e:  # unknown keys, values of the wrong type, bad overrides
        if full_error:
            raise
        code, message = 2, "\n".join(str(x) for x in (e, e.__cause__) if x is not None)
    except Exception as e:
        if not failed_jobs():
            raise
        code, message = 1, f"the sweep stopped: {type(e).__name__}: {e}"
    finally:
        if not full_error:
            os.environ.pop("HYDRA_FULL_ERROR", None)
    failed = failed_jobs()
    if failed:
        lines = [f"{len(failed)} job(s) of the multirun failed:"]
        lines += [f"  {job}: {error}  (see {job}/error.txt)" for job, error in failed]
        message = "\n".join([*lines, message] if message else lines)
        code = code or 1
    if message:
        sys.stderr.write(message.rstrip() + "\n")
    return code


def _join_torchrun_job() -> None:
    """Under torchrun: join the process group before Hydra composes, so every rank names the run
    directory from rank 0's start time; ranks other than 0 write no `.hydra/` and no log file
    (their warnings and errors still reach the terminal)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return  # (checked before importing torch, which a plain run loads only for its job)
    from scn.engine import distributed

    d = distributed.init()
    atexit.register(distributed.close)
    import scn.config

    scn.config.set_run_start(distributed.start_time())
    if not d.main:
        sys.argv += [
            "hydra.output_subdir=null",
            "hydra/job_logging=worker",
            "hydra/hydra_logging=worker",
        ]
