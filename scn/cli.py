"""What the command-line tools share: their parser, the options every tool that runs a model
takes (--device, --batch-size, --dataset, --split), logging to the terminal and one exit path
for user errors."""

from __future__ import annotations

import argparse
import atexit
import datetime
import logging
import os
import sys
import traceback
from collections.abc import Callable
from typing import Any

from scn.errors import JobFailed, UserError
from scn.io import os_error_in, run_dir_error

log = logging.getLogger("scn")


def tool_parser(module: str, doc: str | None) -> argparse.ArgumentParser:
    """The parser of `python -m scn.<module>`, described by the module's docstring as written."""
    return argparse.ArgumentParser(
        prog=f"python -m scn.{module}",
        description=doc,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def add_model_options(
    parser: argparse.ArgumentParser, *, device: str = "auto", batch_size: bool = True
) -> None:
    """--device (and --batch-size): where a tool runs its model and how many images at once."""
    parser.add_argument(
        "--device", default=device, help="auto, cpu, cuda, cuda:N or mps (default: %(default)s)"
    )
    if batch_size:
        parser.add_argument(
            "--batch-size", type=int, default=64, help="images per batch (default: %(default)s)"
        )


def add_dataset_options(
    parser: argparse.ArgumentParser,
    *,
    dataset: str | None = None,
    split: str | None = None,
    with_split: bool = True,
    what: str = "the inputs",
) -> None:
    """--dataset NAME (a conf/dataset option, read as run.py composes it) and --split."""
    from scn.config import group_options

    names = group_options("dataset")
    parser.add_argument("--dataset", choices=names, default=dataset, metavar="NAME",
                        help=f"read {what} as this dataset: {', '.join(names)}"
                        + (" (default: %(default)s)" if dataset else ""))  # fmt: skip
    if not with_split:
        return
    parser.add_argument("--split", choices=["train", "val", "test"], default=split,
                        help="the dataset split to read" +
                        (" (default: %(default)s)" if split else ""))  # fmt: skip


def run_tool(
    parser: argparse.ArgumentParser,
    argv: list[str] | None,
    call: Callable[[argparse.Namespace], Any],
) -> int:
    """Parse `argv` and run `call(args)` through run_cli: a tool's whole `main`."""
    args = parser.parse_args(argv)
    return run_cli(call, args)


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
        problem = os_error_in(e)  # Hydra's job setup: the run directory, .hydra/, the log file
        if problem is not None and not full_error:
            code, message = 2, run_dir_error(problem)
        elif not failed_jobs():
            raise
        else:
            code, message = 1, f"the sweep stopped: {type(e).__name__}: {e}"
    finally:
        if not full_error:
            os.environ.pop("HYDRA_FULL_ERROR", None)
    failed = failed_jobs()
    if failed:
        lines = [f"{len(failed)} job(s) of the multirun failed:"]
        lines += [
            f"  {job}: {error}"
            + (f"  (see {job}/error.txt)" if (job / "error.txt").is_file() else "")
            for job, error in failed
        ]
        message = "\n".join([*lines, message] if message else lines)
        code = code or 1
    if message:
        sys.stderr.write(message.rstrip() + "\n")
    return code


def _join_torchrun_job() -> None:
    """Under torchrun: join the process group before Hydra composes, so every rank names the run
    directory from the job's start time (rank 0's, kept across torchrun's restarts) and every rank
    knows whether this worker group restarts the job; ranks other than 0 write no `.hydra/` and no
    log file (their warnings and errors still reach the terminal)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return  # (checked before importing torch, which a plain run loads only for its job)
    from scn.runtime import distributed

    d = distributed.init()
    atexit.register(distributed.close)
    import scn.config
    from scn import runtime

    start, restart = d.broadcast_object(_torchrun_attempt() if d.main else None)
    scn.config.set_run_start(start)
    runtime.set_elastic_restart(restart)
    if not d.main:
        sys.argv += [
            "hydra.output_subdir=null",
            "hydra/job_logging=worker",
            "hydra/hydra_logging=worker",
        ]


RUN_START_KEY = "scn/{}/run_start"  # in torchrun's agent store, per TORCHELASTIC_RUN_ID
ATTEMPT_KEY = "scn/{}/attempts"


def _torchrun_attempt() -> tuple[datetime.datetime, str | None]:
    """Rank 0: the job's start time, and why this worker group restarts the job (None for its
    first group).

    torchrun restarts a failed worker group (`--max-restarts`) with the same command; the new group
    must find the first group's run directory, which `${run_start:...}` names from the start time.
    The elastic agent serves one TCP store for the whole job at MASTER_ADDR:MASTER_PORT (when it
    sets TORCHELASTIC_USE_AGENT_STORE=True, torch's default), reachable from every node and kept
    across restarts for as long as the job's rendezvous lives; no other job sees it. Rank 0 of the
    first group stores its start time there, and rank 0 of every group counts itself, so a later
    group reads the first start back and knows it restarts the job, also where torchrun does not
    count the restart (TORCHELASTIC_RESTART_COUNT stays 0 on the nodes that a membership change
    restarts). The caller broadcasts rank 0's answer, so all nodes agree. A file would be weaker:
    its place would depend on the directory it is meant to find, nodes may not share a file
    system, and `--rdzv-id` (TORCHELASTIC_RUN_ID) defaults to "none" for every c10d job. Without
    the agent's store (TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1), TORCHELASTIC_RESTART_COUNT > 0 tells
    a restart, which then finds the first group's directory only when hydra.run.dir names it.
    """
    now = datetime.datetime.now()
    count = int(os.environ.get("TORCHELASTIC_RESTART_COUNT") or 0)
    counted = f"TORCHELASTIC_RESTART_COUNT={count}"
    run_id = os.environ.get("TORCHELASTIC_RUN_ID", "")
    store = _agent_store()
    if store is not None:
        try:
            attempt = store.add(ATTEMPT_KEY.format(run_id), 1)
            first = store.compare_set(RUN_START_KEY.format(run_id), "", now.isoformat())
            start = datetime.datetime.fromisoformat(first.decode())
        except (RuntimeError, ValueError) as e:  # DistStoreError is a RuntimeError
            log.warning("torchrun's agent store did not answer (%s)", e)
        else:
            return start, (f"torchrun attempt {attempt} ({counted})" if attempt > 1 else None)
    if count == 0:
        return now, None
    log.warning(
        "torchrun restart %d: without torchrun's agent store this attempt cannot find the first "
        "one's start time, so a run directory named from it (the default hydra.run.dir) is a new "
        "one; set hydra.run.dir to resume across restarts",
        count,
    )
    return now, f"torchrun restart {count} ({counted})"


def _agent_store() -> Any:
    """A client of the TCP store torchrun's elastic agent serves for the job, or None."""
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True" or "MASTER_PORT" not in os.environ:
        return None
    from torch.distributed import TCPStore

    try:
        return TCPStore(os.environ.get("MASTER_ADDR", "localhost"), int(os.environ["MASTER_PORT"]),
                        is_master=False, timeout=datetime.timedelta(seconds=60))  # fmt: skip
    except (RuntimeError, ValueError) as e:
        log.warning("cannot reach torchrun's agent store (%s)", e)
        return None


# ------------------------------------------------------------------ output directories
