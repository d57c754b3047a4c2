"""Files and folders: atomic writes (readers see the old file or the new one, never a half-written
one), and the one-line reason a path cannot be made or written."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from scn.errors import UserError


@contextmanager
def atomic_open(path: Path | str, mode: str = "w") -> Iterator[IO]:
    """Write to a temp file beside `path`, fsync, then rename over `path`; on error the temp file
    is removed and any existing `path` is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# ---------------------------------------------------- paths that cannot be made or written
def os_error_in(e: BaseException) -> OSError | None:
    """The OSError `e` is or was raised from (logging's dictConfig wraps a log file's in a
    ValueError), or None."""
    seen: set[int] = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, OSError):
            return e
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return None


def unwritable(e: OSError) -> str:
    """Why a path cannot be made or written, in words: the file that stands where a folder of
    the path should be, or the system's reason (permission denied, read-only, no space left)."""
    if not e.filename:
        return e.strerror or str(e)
    path = Path(os.path.abspath(os.fsdecode(e.filename)))
    for p in (path, *path.parents):
        if p.is_symlink() or p.exists():
            if not p.is_dir():
                return f"{p} is a file, not a folder"
            break
    return f"{path}: {e.strerror or e}"


def run_dir_error(e: OSError) -> str:
    """The one line for a run directory Hydra could not set up."""
    return (
        f"cannot create or write the run directory: {unwritable(e)}. hydra.run.dir (with -m: "
        "hydra.sweep.dir) must name a folder that can be created and written; choose another "
        "or clear the path"
    )


def make_output_dir(path: Path | str, option: str = "--out") -> Path:
    """Create the folder `option` names (and check it can be written) before any work is done,
    or raise a UserError that says why not, instead of an OSError's traceback at the end."""
    path = Path(path).expanduser()
    try:
        path.mkdir(parents=True, exist_ok=True)
        if not os.access(path, os.W_OK):
            raise PermissionError(13, "no permission to write there", str(path))
    except OSError as e:
        raise UserError(
            f"{option} {path}: cannot create or write it ({unwritable(e)}); pass an {option} "
            "whose folders can be created and written"
        ) from e
    return path


def check_output_file(path: Path | str, option: str = "--out") -> Path:
    """`make_output_dir` for the folder of a file `option` names; a folder there is refused."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise UserError(f"{option} {path} is a folder; pass the name of the file to write")
    make_output_dir(path.parent, option)
    return path
