"""Crash-safe output: atomic file writes, atomic folder swaps with recovery, folder locks, torn JSONL, full disks.

Every writer of the project goes through these, so that a process killed at any instant (SIGKILL, power loss,
a full disk) leaves each output either as it was before or complete, never half-written or mixed:

- `atomic_path` / `atomic_write_text`: a file is written under a temporary name in its own folder, flushed to
  disk, then renamed over the target (`os.replace`, atomic on POSIX).
- `replace_folder`: a whole folder is built beside the target and swapped in (target -> backup, new -> target,
  backup removed). A marker written last tells a complete new folder from an interrupted one; `recover_folder`,
  called by every later `replace_folder` or `folder_lock`, puts a complete folder back where an interruption
  between the two renames left none.
- `folder_lock`: an advisory `fcntl.flock` lock on an output folder, so that a second process writing into it
  stops at once with a message naming the process that holds it.
- `read_jsonl`: a JSON-lines log whose last line was torn by a kill is read without it (with a warning);
  damage anywhere else is an error naming the file and line.
- `disk_full_errors`: an `OSError(ENOSPC)` -- or torch's `RuntimeError` from its zip writer, which wraps it --
  becomes a `DiskFullError` that says which folder, how much space is free, and what was kept.
"""

import contextlib
import ctypes
import errno
import json
import os
import shutil
import socket
import sys
import time
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path

try:
    import fcntl
except ImportError:  # not POSIX: folders are not locked
    fcntl = None

TEMPORARY_SUFFIX = ".partial"
NEW_INFIX = ".new-"
OLD_INFIX = ".old-"
INTERNAL_PREFIX = ".astro"  # names of this module's own files inside an output folder
COMPLETE_MARKER = f"{INTERNAL_PREFIX}-complete"
TEST_PAUSE_ENV = "ASTRO_TEST_PAUSE_AT"
TEST_PAUSE_FILE_ENV = "ASTRO_TEST_PAUSE_FILE"
NO_EXCHANGE_ENV = "ASTRO_NO_RENAME_EXCHANGE"  # tests: take the two-rename path of `replace_folder`
_TORCH_WRITER_ERRORS = ("inline_container", "PytorchStreamWriter", "file write failed")


class DiskFullError(OSError):
    """A write failed because the disk is full; the message says where, how much is free and what was kept."""

    def __str__(self) -> str:
        return str(self.strerror)


class FolderInUseError(RuntimeError):
    """Another process holds the lock of an output folder."""


class CorruptFileError(ValueError):
    """A file is damaged beyond a torn last line; the message names the file and the line."""


# ---------------------------------------------------------------------------------------------------- test hook
def pause_point(name: str) -> None:
    """
    Test hook: if the environment variable `ASTRO_TEST_PAUSE_AT` equals `name`, write this process's id to the
    file `ASTRO_TEST_PAUSE_FILE` (if set) and sleep, so that a test can SIGKILL the process at exactly this
    point. Does nothing otherwise.
    """
    if os.environ.get(TEST_PAUSE_ENV) != name:
        return
    if os.environ.get(TEST_PAUSE_FILE_ENV):
        Path(os.environ[TEST_PAUSE_FILE_ENV]).write_text(str(os.getpid()))
    time.sleep(3600)


# ---------------------------------------------------------------------------------------------------- files
def _fsync_folder(folder: Path) -> None:
    """Flush a folder's entries (renames, new files) to disk; a no-op where folders cannot be opened."""
    try:
        handle = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(handle)
    except OSError:
        pass
    finally:
        os.close(handle)


def temporary_name(path: Path) -> Path:
    """A unique hidden temporary name beside `path`: `.<name>.<pid>-<random>.partial`."""
    return path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}{TEMPORARY_SUFFIX}")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, kept: str | None = None) -> Iterator[Path]:
    """
    Yield a temporary path beside `path` for a library to write to; when the block ends without error the file
    is flushed to disk and renamed to `path` (atomically), otherwise removed. `path` is never half-written. A full
    disk raises `DiskFullError`, saying `kept` (default: that `path` is unchanged).
    """
    path = Path(path)
    temporary = temporary_name(path)
    try:
        with disk_full_errors(path.parent, kept=kept or f"{path} is unchanged"):
            yield temporary
            with open(temporary, "rb+") as handle:
                os.fsync(handle.fileno())
            os.replace(temporary, path)
        _fsync_folder(path.parent)
    finally:
        temporary.unlink(missing_ok=True)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write `data` to `path` atomically (temporary file in the same folder, fsync, `os.replace`)."""
    path = Path(path)
    with atomic_path(path) as temporary:
        temporary.write_bytes(data)
    return path


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> Path:
    """Write `text` to `path` atomically (temporary file in the same folder, fsync, `os.replace`)."""
    return atomic_write_bytes(path, text.encode(encoding))


def remove_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Remove the temporary files (`.*.partial`) that killed writers left in `folder`; call under its lock."""
    removed = []
    for path in Path(folder).glob(f".*{TEMPORARY_SUFFIX}"):
        if path.is_file():
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


# ---------------------------------------------------------------------------------------------------- JSONL
def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """
    The records of a JSON-lines file (empty if it does not exist). A damaged *last* line -- the tail of a
    write torn by a kill or a full disk -- is dropped with a warning naming the file; a damaged line before
    the last raises `CorruptFileError` naming the file and the line number.
    """
    path = Path(path)
    if not path.exists():
        return []
    lines = path.read_bytes().split(b"\n")
    if lines and not lines[-1].strip():
        lines.pop()  # the newline that ends the last complete record
    records = []
    for number, line in enumerate(lines, start=1):
        try:
            records.append(json.loads(line))
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            if number == len(lines):
                warnings.warn(
                    f"{path}: dropped a torn last line {number} ({len(line)} bytes, {error}); it was being written "
                    "when the process stopped.",
                    stacklevel=2,
                )
                break
            raise CorruptFileError(
                f"{path}: line {number} of {len(lines)} is not valid JSON ({error}); the file is damaged before "
                "its last line. Repair or delete it."
            ) from error
    return records


def append_jsonl(path: str | os.PathLike, record: dict) -> None:
    """Append one JSON record as a line, flushed to disk (a kill leaves at most a torn last line)."""
    with disk_full_errors(Path(path).parent, kept=f"the earlier records of {path}"):
        with open(path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
            handle.flush()
            os.fsync(handle.fileno())


# ---------------------------------------------------------------------------------------------------- disk full
def _size(num_bytes: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(num_bytes) < 1024 or unit == "TiB":
            return f"{num_bytes:.0f} {unit}" if unit == "B" else f"{num_bytes:.1f} {unit}"
        num_bytes /= 1024
    raise AssertionError("unreachable")


def is_disk_full(error: BaseException) -> bool:
    """Whether `error` (or an error it wraps) is a full disk: `ENOSPC`/`EDQUOT`, or torch's zip writer failing."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if isinstance(error, RuntimeError) and any(text in str(error) for text in _TORCH_WRITER_ERRORS):
            return True
        if "No space left on device" in str(error):
            return True
        error = error.__cause__ or error.__context__
    return False


def disk_full_message(folder: str | os.PathLike, kept: str, error: BaseException | None = None) -> str:
    """The explanation of a full disk: which folder, free/total space now, what was kept, what to do."""
    folder = Path(folder)
    probe = next((p for p in (folder, *folder.parents) if p.exists()), Path("."))
    try:
        usage = shutil.disk_usage(probe)
        space = f"{_size(usage.free)} free of {_size(usage.total)}"
    except OSError:
        space = "free space unknown"
    cause = f" ({type(error).__name__}: {str(error).strip()[:200]})" if error is not None else ""
    return (
        f"The disk is full: writing into {folder} failed{cause}; that disk has {space} now. Nothing already "
        f"written was lost: {kept}. Free some space (or choose a folder on another disk) and run again."
    )


@contextlib.contextmanager
def disk_full_errors(folder: str | os.PathLike, kept: str) -> Iterator[None]:
    """Re-raise a full-disk error inside the block as `DiskFullError` explaining `folder`, free space and `kept`."""
    try:
        yield
    except DiskFullError:
        raise
    except (OSError, RuntimeError) as error:
        if not is_disk_full(error):
            raise
        raise DiskFullError(errno.ENOSPC, disk_full_message(folder, kept, error)) from error


# ---------------------------------------------------------------------------------------------------- folders
def _siblings(final: Path, infix: str) -> list[Path]:
    """The staging (`.new-`) or backup (`.old-`) folders of `final`, newest first."""
    found = [p for p in final.parent.glob(f".{final.name}{infix}*") if p.is_dir()]
    return sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)


def recover_folder(final: str | os.PathLike) -> str | None:
    """
    Repair what an interrupted `replace_folder` left: if `final` is missing, a complete new folder (its marker
    written) or else the newest backup is renamed back to `final`; leftover backups and incomplete new folders
    are removed. Returns 'new', 'old' or None (nothing restored). Call under the folder's lock.
    """
    final = Path(final)
    restored = None
    if not final.exists():
        complete = [p for p in _siblings(final, NEW_INFIX) if (p / COMPLETE_MARKER).is_file()]
        backups = _siblings(final, OLD_INFIX)
        if complete:
            os.rename(complete[0], final)
            restored = "new"
        elif backups:
            os.rename(backups[0], final)
            restored = "old"
        if restored:
            _fsync_folder(final.parent)
            warnings.warn(
                f"{final} was missing after an interrupted write: restored the {restored} complete folder.",
                stacklevel=2,
            )
    if final.is_dir():
        (final / COMPLETE_MARKER).unlink(missing_ok=True)
    for leftover in (*_siblings(final, NEW_INFIX), *_siblings(final, OLD_INFIX)):
        shutil.rmtree(leftover, ignore_errors=True)
    return restored


def exchange_folders(first: Path, second: Path) -> bool:
    """
    Swap two existing paths in one atomic step (Linux `renameat2(RENAME_EXCHANGE)`); returns False where the
    system or file system cannot (then nothing was changed).
    """
    if os.environ.get(NO_EXCHANGE_ENV) or not sys.platform.startswith("linux"):
        return False
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(first), at_fdcwd, os.fsencode(second), rename_exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV):
        return False
    raise OSError(code, f"exchanging {first} and {second}: {os.strerror(code)}")


@contextlib.contextmanager
def replace_folder(final: str | os.PathLike, kept: str | None = None) -> Iterator[Path]:
    """
    Yield an empty staging folder beside `final`; when the block ends without error, swap it in place of
    `final` so that an interruption at any instant leaves either the old or the new complete folder under
    `final`. On Linux the two folders are exchanged in one atomic step; elsewhere `final` is renamed to a backup
    and the new folder to `final`, and a kill between the two renames is repaired by `recover_folder` (the next
    `folder_lock` or `replace_folder` of `final`), which renames the complete new folder (its marker written
    last) into place. On an error the staging folder is removed and `final` is untouched. Holds
    `folder_lock(final)` throughout.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    if final.is_dir() and not _parent_writable(final):
        with folder_lock(final), _replace_contents(final, kept) as staging:
            yield staging
        return
    with folder_lock(final):
        kept = kept or (f"{final} is unchanged" if final.exists() else f"{final} was not created")
        staging = final.parent / f".{final.name}{NEW_INFIX}{uuid.uuid4().hex[:12]}"
        staging.mkdir()
        try:
            with disk_full_errors(final.parent, kept=kept):
                yield staging
                pause_point("replace_folder:before_marker")
                atomic_write_text(staging / COMPLETE_MARKER, time.strftime("%Y-%m-%dT%H:%M:%S%z"))
                _fsync_folder(staging)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        backup = final.parent / f".{final.name}{OLD_INFIX}{uuid.uuid4().hex[:12]}"
        if final.exists() and exchange_folders(staging, final):
            pause_point("replace_folder:after_exchange")
            os.rename(staging, backup)  # the old folder, now under the staging name
        else:
            if final.exists():
                os.rename(final, backup)
                pause_point("replace_folder:between_renames")
            os.rename(staging, final)
        _fsync_folder(final.parent)
        pause_point("replace_folder:after_swap")
        (final / COMPLETE_MARKER).unlink(missing_ok=True)
        shutil.rmtree(backup, ignore_errors=True)


@contextlib.contextmanager
def _replace_contents(final: Path, kept: str | None) -> Iterator[Path]:
    """`replace_folder` where the parent of `final` is read-only: staged inside `final`, then moved entry by entry."""
    warnings.warn(
        f"{final.parent} is not writable: {final} is replaced entry by entry, not in one step; an interruption "
        "can leave a mix of old and new files.",
        stacklevel=3,
    )
    staging = final / f"{COMPLETE_MARKER}-staging-{uuid.uuid4().hex[:12]}"
    staging.mkdir()
    try:
        with disk_full_errors(final, kept=kept or f"{final} is unchanged"):
            yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    new = {path.name for path in staging.iterdir()}
    for path in final.iterdir():
        if path.name in new or path.name.startswith(INTERNAL_PREFIX):
            continue
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
    for name in new:
        if (final / name).is_dir():
            shutil.rmtree(final / name)
        os.replace(staging / name, final / name)
    staging.rmdir()


def empty_folder(folder: str | os.PathLike) -> None:
    """
    Delete the contents of `folder` as one step: it is renamed to a backup and recreated empty, then the backup
    is removed (a kill in between leaves the old folder for `recover_folder` to put back). Call under its lock.
    """
    folder = Path(folder)
    backup = folder.parent / f".{folder.name}{OLD_INFIX}{uuid.uuid4().hex[:12]}"
    os.rename(folder, backup)
    folder.mkdir()
    _fsync_folder(folder.parent)
    shutil.rmtree(backup, ignore_errors=True)


def link_tree(source: Path, target: Path) -> None:
    """Recreate the tree `source` under `target` with hard links (copies where the file system has none)."""
    if source.is_dir():
        target.mkdir(parents=True, exist_ok=True)
        for child in source.iterdir():
            link_tree(child, target / child.name)
        return
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


# ---------------------------------------------------------------------------------------------------- locks
_HELD_LOCKS: dict[Path, list] = {}  # lock file -> [handle, depth]: re-entrant within one process


def _parent_writable(folder: Path) -> bool:
    return os.access(Path(folder).absolute().parent, os.W_OK)


def lock_file(folder: str | os.PathLike) -> Path:
    """
    The lock file of an output folder: `.<name>.lock` beside it (it survives the folder being swapped), or
    `.astro.lock` inside it where the folder's parent is not writable.
    """
    folder = Path(folder).absolute()
    if not _parent_writable(folder) and folder.is_dir():
        return folder / f"{INTERNAL_PREFIX}.lock"
    return folder.parent / f".{folder.name}.lock"


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike, what: str = "output folder") -> Iterator[None]:
    """
    Hold an exclusive advisory lock on `folder` (`fcntl.flock` on `lock_file(folder)`) for the block; the lock
    is re-entrant within a process. Raises `FolderInUseError` at once, naming the process that holds it, if
    another process does. An interrupted `replace_folder` of `folder` is repaired once the lock is held.
    """
    path = lock_file(folder)
    if fcntl is None:
        yield
        return
    if path in _HELD_LOCKS:
        _HELD_LOCKS[path][1] += 1
        try:
            yield
        finally:
            _HELD_LOCKS[path][1] -= 1
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        handle = open(path, "a+")
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise FolderInUseError(
                f"{what} {Path(folder)} is in use by {holder}; wait until it finishes or choose another folder "
                f"(the lock, {path}, is released when that process ends)."
            ) from None
        try:
            same = os.fstat(handle.fileno()).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        handle.close()  # the file was removed by the previous holder between our open and flock: retry
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()} on {socket.gethostname()} (started {time.strftime('%Y-%m-%d %H:%M:%S %Z')})")
    handle.flush()
    _HELD_LOCKS[path] = [handle, 1]
    try:
        recover_folder(folder)
        yield
    finally:
        del _HELD_LOCKS[path]
        path.unlink(missing_ok=True)  # while still locked: a waiting opener sees a new inode and retries
        handle.close()
