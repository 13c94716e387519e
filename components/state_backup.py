"""The SuperLink's database across Flower releases: backed up before another release opens it, restored on the way back.

Flower's SuperLink migrates its SQLite database forward when it starts (alembic revisions shipped in
flwr, flwr/supercore/state/alembic), and an older SuperLink cannot open a schema it has no revision
for. So the SuperLink pod's init container runs this file (mounted from a ConfigMap) in the platform
image, with the flwr the SuperLink is about to run; it imports only the standard library, flwr and
alembic (a flwr dependency):

    python state_backup.py backup --database /var/lib/flowerbed/state.db
    python state_backup.py restore --database /var/lib/flowerbed/state.db --backup NAME

Beside the database on the state volume:
  state.db.flwr-release                   the Flower release that last opened it
  backups/state-flwr<release>-<UTC>.db    a copy made by sqlite3's online backup API, checked with
                                          `PRAGMA integrity_check`, named for the release it belongs to

`backup` (every SuperLink start): no database yet -> records the release; the same release as last
time -> nothing; another release -> a backup first, then the new release recorded (a database without
a marker, left by flowerbed before it recorded releases, belongs to the release whose schema head it is
at, `RELEASE_OF_SCHEMA_HEAD`, else to `unknown`); a database whose schema revision this flwr does not
know (opened by a newer release: a downgrade) -> exit 1 naming the backup to restore, before the
SuperLink can fail on it. `restore` (`make restore-state`, SuperLink stopped): the backup becomes
the database, the replaced one is kept in backups/ as `...-replaced.db`.
"""

from __future__ import annotations

import argparse
import datetime
import os
import re
import sqlite3
import sys
from importlib.metadata import version
from pathlib import Path

BACKUPS = "backups"
RELEASE_SUFFIX = ".flwr-release"
UNKNOWN = "unknown"  # a database from before flowerbed recorded releases, at a schema of no known release
# Schema head revision -> the Flower release whose migrations end there, for databases left by flowerbed
# before it recorded releases (which pinned flwr 1.41.0): d90a2f91f23c is the newest revision in flwr
# 1.41.0's flwr/supercore/state/alembic/versions (1.42.0 adds d9bd9d502cf9 on top of it).
RELEASE_OF_SCHEMA_HEAD = {"d90a2f91f23c": "1.41.0"}
_BACKUP_NAME = re.compile(rf"^state-flwr(?P<release>\d+\.\d+\.\d+(?:(?:a|b|rc)\d+)?|{UNKNOWN})"
                          r"-\d{8}T\d{6}Z(?:-replaced)?\.db$")


class StateError(RuntimeError):
    """The database cannot be opened by this release, or a restore cannot work; one line."""


def running_release() -> str:
    """The flwr this image runs (the SuperLink's own)."""
    return version("flwr")


def known_revisions() -> set[str]:
    """Every schema revision this flwr's migrations know."""
    from alembic.script import ScriptDirectory
    from flwr.supercore.state.alembic.utils import ALEMBIC_DIR

    return {script.revision for script in ScriptDirectory(str(ALEMBIC_DIR)).walk_revisions()}


def schema_revision(database: Path) -> str | None:
    """The alembic revision the database is at; None before Flower tracked revisions (or when empty)."""
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as connection:
        try:
            row = connection.execute("SELECT version_num FROM alembic_version").fetchone()
        except sqlite3.OperationalError:
            return None
    return row[0] if row else None


def recorded_release(database: Path) -> str:
    """The release that last opened `database`: its marker's, else the one its schema head says, else UNKNOWN."""
    marker = database.with_name(database.name + RELEASE_SUFFIX)
    if marker.exists():
        return marker.read_text().strip()
    return RELEASE_OF_SCHEMA_HEAD.get(schema_revision(database) or "", UNKNOWN)


def record_release(database: Path, release: str) -> None:
    """Writes the marker atomically: a crash leaves the old one or the new one, never half of one."""
    marker = database.with_name(database.name + RELEASE_SUFFIX)
    partial = marker.with_name(marker.name + ".partial")
    partial.write_text(release + "\n")
    os.replace(partial, marker)


def copy_database(source: Path, target: Path) -> None:
    """A consistent copy (sqlite3's backup API reads the WAL too), checked before it takes `target`'s name."""
    partial = target.with_name(target.name + ".partial")
    partial.unlink(missing_ok=True)
    with sqlite3.connect(f"file:{source}?mode=ro", uri=True) as src, sqlite3.connect(partial) as dst:
        src.backup(dst)
        check = dst.execute("PRAGMA integrity_check").fetchone()[0]
    if check != "ok":
        partial.unlink()
        raise StateError(f"{target.name}: the copy of {source.name} fails SQLite's integrity check ({check})")
    os.replace(partial, target)


def backup(database: Path, release: str, now: datetime.datetime) -> str:
    """Before `release` opens `database`: what was done, as one line. StateError if it cannot open it."""
    if not database.exists():
        record_release(database, release)
        return f"{database.name}: none yet; Flower {release} creates it"
    revision = schema_revision(database)
    previous = recorded_release(database)
    if revision is not None and revision not in known_revisions():
        raise StateError(
            f"{database.name} is at schema revision {revision}, which Flower {release} does not know (it was last "
            f"opened by Flower {previous}, and Flower migrates forward only); restore the backup made for "
            f"{release} first: make restore-state STACK=<stack> BACKUP=<one of {BACKUPS}/state-flwr{release}-*.db> "
            "(README: Upgrading Flower)")
    if previous == release:
        return f"{database.name}: last opened by Flower {release} (schema {revision}); no backup needed"
    target = database.parent / BACKUPS / f"state-flwr{previous}-{now:%Y%m%dT%H%M%SZ}.db"
    target.parent.mkdir(exist_ok=True)
    copy_database(database, target)
    record_release(database, release)
    return (f"{database.name}: backed up to {BACKUPS}/{target.name} ({target.stat().st_size} bytes, schema "
            f"{revision}) before Flower {release} opens what Flower {previous} left")


def release_of_backup(name: str) -> str:
    """`state-flwr1.41.0-20261207T101500Z.db` (or `...Z-replaced.db`) -> `1.41.0`."""
    match = _BACKUP_NAME.match(name)
    if match is None:
        raise StateError(f"BACKUP: {name!r} is not a backup's name (state-flwr<release>-<UTC time>.db)")
    return match["release"]


def restore(database: Path, name: str, now: datetime.datetime) -> str:
    """`backups/<name>` becomes the database (the SuperLink must be stopped); the replaced one is kept."""
    source = database.parent / BACKUPS / name
    release = release_of_backup(name)
    if not source.is_file():
        held = sorted(p.name for p in source.parent.glob("state-flwr*.db")) if source.parent.is_dir() else []
        raise StateError(f"BACKUP: no {BACKUPS}/{name} on the state volume (it holds: {', '.join(held) or 'none'})")
    kept = ""
    if database.exists():
        stamp = f"{now:%Y%m%dT%H%M%SZ}"
        replaced = database.parent / BACKUPS / f"state-flwr{recorded_release(database)}-{stamp}-replaced.db"
        copy_database(database, replaced)
        kept = f"; the replaced database is kept as {BACKUPS}/{replaced.name}"
    for leftover in (database.with_name(database.name + suffix) for suffix in ("-wal", "-shm")):
        leftover.unlink(missing_ok=True)  # the replaced database's journal must not be replayed into the backup
    copy_database(source, database)
    record_release(database, release)
    return f"{database.name}: restored from {BACKUPS}/{name} (Flower {release}'s){kept}"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="state_backup.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=("backup", "restore"))
    parser.add_argument("--database", required=True, type=Path)
    parser.add_argument("--backup", help="restore: a backup's file name in backups/")
    args = parser.parse_args(argv)
    now = datetime.datetime.now(datetime.timezone.utc)
    try:
        if args.action == "backup":
            line = backup(args.database, running_release(), now)
        else:
            line = restore(args.database, args.backup or "", now)
    except StateError as err:
        print(f"state-backup: {err}", file=sys.stderr)
        return 1
    print(f"state-backup: {line}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
