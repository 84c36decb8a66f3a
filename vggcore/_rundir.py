"""The checkpoint folder of a training run: checked before the first epoch, never silently reused.

* A folder that already holds a run (``last.safetensors`` or ``best.safetensors``) is refused unless the caller
  resumes it or asks to overwrite it; overwriting removes the old run's checkpoints first, so the old best model
  cannot later pass for the new run's. Resuming needs ``last.safetensors``: a folder holding only the best of a
  run has nothing to continue from, and a new run there would replace that best, so it is refused too. Resuming
  into an empty or missing folder starts a new run (so one command line can start and later continue a run).
* The folder must be writable: a probe file is written, fsynced and removed before any training, so a read-only
  or missing-permission folder is reported at once instead of after the first epoch.
* Temporary files left by a killed run (``.last.safetensors.*.tmp`` and the like, from the atomic writes in
  vggcore.checkpoint) are removed.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

RUN_FILES = ("last.safetensors", "best.safetensors")
# What vggcore.checkpoint's atomic writes (".<name>.<random>.tmp") and train's curve plot (".<name>.tmp.png")
# leave behind when the process dies mid-write.
_STALE = re.compile(r"^\.(last\.safetensors|best\.safetensors|curves\.png|conv1_1_filters\.png)\..*tmp(\.png)?$")


def stale_temporaries(folder: Path) -> list:
    """The leftover temporary files of killed writes in ``folder``."""
    try:
        return sorted(p for p in Path(folder).iterdir() if _STALE.match(p.name) and p.is_file())
    except OSError:
        return []


def prepare(folder, resume: bool, overwrite: bool, op: str = "train") -> Path:
    """Creates ``folder`` if needed, checks it is writable, removes stale temporaries and refuses to start a
    new run over an existing one unless ``overwrite`` (then the old run's checkpoints are removed)."""
    folder = Path(folder).expanduser()
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(f"{op}: checkpoint_dir {folder} exists and is not a folder")
    existing = [name for name in RUN_FILES if (folder / name).exists()]
    if existing and not resume and not overwrite:
        raise FileExistsError(f"{op}: checkpoint_dir {folder} already holds a run ({', '.join(existing)}); "
                              f"resume it (resume=True, --resume), replace it (overwrite=True, --overwrite) or "
                              f"pick another folder")
    if existing and resume and "last.safetensors" not in existing:
        raise FileExistsError(f"{op}: cannot resume in checkpoint_dir {folder}: it holds {', '.join(existing)} of a "
                              f"run but no last.safetensors to continue from; replace that run (overwrite=True, "
                              f"--overwrite, without resume) or pick another folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-test-{os.getpid()}.tmp"
        with open(probe, "wb") as f:
            f.write(b"vggcore")
            f.flush()
            os.fsync(f.fileno())
        probe.unlink()
    except OSError as error:
        reason = error.strerror or str(error)
        raise PermissionError(f"{op}: cannot write checkpoints into {folder}: {reason}") from None
    for path in stale_temporaries(folder):
        try:
            path.unlink()
        except OSError:
            pass
    if existing and overwrite and not resume:
        for name in existing:
            (folder / name).unlink()
    return folder
