"""Replace a file so that a reader sees the old content or the new, never a part of either.

The content goes to a temporary file of its own in the target's directory (`mkstemp`: two
writers of one path, such as two tasks of one site, never share it; the same directory keeps
the rename on one filesystem), then `os.replace` swaps it in, which is atomic on POSIX
(rename(2)). A writer killed midway leaves the previous file; an exception removes the
temporary file. Durability across a power loss (fsync) is not attempted: what this guards
against is a killed pod or process.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO


@contextmanager
def replacing(path: Path) -> Iterator[BinaryIO]:
    """`with replacing(path) as file: file.write(...)`: a binary file that becomes `path` when
    the block ends without an exception (the parent directory is created if missing)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            yield file
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
