"""components/state_backup.py, run as the SuperLink pod's init container runs it, on databases made and
migrated by Flower's own alembic revisions (the 1.41 schema is the 1.42 one migrated one revision down)."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import create_engine

from components.flower_release import FLOWER_RELEASE
from components.state_backup import BACKUPS, RELEASE_SUFFIX, StateError, release_of_backup, schema_revision
from flwr.supercore.state.alembic.utils import build_alembic_config, run_migrations

SCRIPT = Path(__file__).resolve().parents[2] / "components" / "state_backup.py"
# Flower 1.41.0's newest schema revision; 1.42.0 adds d9bd9d502cf9 on top of it (compacted_contexts.token_count).
FLOWER_141_HEAD = "d90a2f91f23c"
FLOWER_142_HEAD = "d9bd9d502cf9"


def state_backup(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=120)


def flower_database(path: Path, revision: str = "heads", release: str | None = None) -> Path:
    """A SuperLink database at `revision` (Flower's migrations), one row of our own in it, and the
    release marker a previous start left (none: a database from before flowerbed recorded releases)."""
    engine = create_engine(f"sqlite:///{path}")
    run_migrations(engine)
    if revision != "heads":
        command.downgrade(build_alembic_config(engine), revision)
    engine.dispose()
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE probe (note TEXT)")
        db.execute("INSERT INTO probe VALUES ('run history')")
    if release is not None:
        path.with_name(path.name + RELEASE_SUFFIX).write_text(release + "\n")
    return path


def notes(path: Path) -> list[str]:
    with sqlite3.connect(path) as db:
        return [row[0] for row in db.execute("SELECT note FROM probe")]


def marker(path: Path) -> str:
    return path.with_name(path.name + RELEASE_SUFFIX).read_text().strip()


def test_the_installed_flower_is_the_release_its_head_revision_belongs_to(tmp_path):
    assert schema_revision(flower_database(tmp_path / "state.db")) == FLOWER_142_HEAD
    assert FLOWER_RELEASE == "1.42.0"


def test_a_new_federation_has_no_database_yet_and_only_the_release_is_recorded(tmp_path):
    database = tmp_path / "state.db"
    result = state_backup("backup", "--database", str(database))
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"state-backup: state.db: none yet; Flower {FLOWER_RELEASE} creates it\n"
    assert marker(database) == FLOWER_RELEASE
    assert not database.exists() and not (tmp_path / BACKUPS).exists()


def test_an_upgrade_backs_up_the_old_releases_database_before_the_new_one_migrates_it(tmp_path):
    database = flower_database(tmp_path / "state.db", FLOWER_141_HEAD, release="1.41.0")
    result = state_backup("backup", "--database", str(database))
    assert result.returncode == 0, result.stderr
    [backup] = (tmp_path / BACKUPS).iterdir()
    assert release_of_backup(backup.name) == "1.41.0"
    assert result.stdout.startswith(f"state-backup: state.db: backed up to {BACKUPS}/{backup.name} (")
    assert f"schema {FLOWER_141_HEAD}) before Flower {FLOWER_RELEASE} opens what Flower 1.41.0 left" in result.stdout
    assert (schema_revision(backup), notes(backup)) == (FLOWER_141_HEAD, ["run history"])
    assert marker(database) == FLOWER_RELEASE

    # The SuperLink starts and migrates; its next start (same release) backs up nothing more.
    run_migrations(create_engine(f"sqlite:///{database}"))
    assert schema_revision(database) == FLOWER_142_HEAD
    again = state_backup("backup", "--database", str(database))
    assert again.stdout == (f"state-backup: state.db: last opened by Flower {FLOWER_RELEASE} (schema "
                            f"{FLOWER_142_HEAD}); no backup needed\n")
    assert len(list((tmp_path / BACKUPS).iterdir())) == 1


def test_a_database_from_before_releases_were_recorded_is_backed_up_under_the_release_of_its_schema(tmp_path):
    # What the flowerbed release before this one (flwr 1.41.0, no marker) leaves on the state volume.
    database = flower_database(tmp_path / "state.db", FLOWER_141_HEAD)
    result = state_backup("backup", "--database", str(database))
    assert result.returncode == 0, result.stderr
    [backup] = (tmp_path / BACKUPS).iterdir()
    assert backup.name.startswith("state-flwr1.41.0-")
    assert "before Flower 1.42.0 opens what Flower 1.41.0 left" in result.stdout


def test_an_unmarked_database_at_a_schema_of_no_known_release_is_backed_up_as_unknown(tmp_path):
    database = flower_database(tmp_path / "state.db")  # this release's head, yet no marker: not one we wrote
    assert state_backup("backup", "--database", str(database)).returncode == 0
    [backup] = (tmp_path / BACKUPS).iterdir()
    assert backup.name.startswith("state-flwrunknown-")


def test_a_downgrade_onto_a_newer_schema_stops_the_pod_naming_the_backup_to_restore(tmp_path):
    database = flower_database(tmp_path / "state.db", release="1.43.0")
    with sqlite3.connect(database) as db:
        db.execute("UPDATE alembic_version SET version_num = 'ffffffffffff'")  # a revision 1.42 does not ship
    result = state_backup("backup", "--database", str(database))
    assert result.returncode == 1
    assert result.stderr == (
        f"state-backup: state.db is at schema revision ffffffffffff, which Flower {FLOWER_RELEASE} does not know "
        f"(it was last opened by Flower 1.43.0, and Flower migrates forward only); restore the backup made for "
        f"{FLOWER_RELEASE} first: make restore-state STACK=<stack> BACKUP=<one of backups/state-flwr"
        f"{FLOWER_RELEASE}-*.db> (README: Upgrading Flower)\n")
    assert marker(database) == "1.43.0" and not (tmp_path / BACKUPS).exists()


def test_a_rollback_restores_the_old_releases_schema_and_keeps_what_it_replaces(tmp_path):
    database = flower_database(tmp_path / "state.db", FLOWER_141_HEAD, release="1.41.0")
    state_backup("backup", "--database", str(database))
    [backup] = (tmp_path / BACKUPS).iterdir()
    run_migrations(create_engine(f"sqlite:///{database}"))
    with sqlite3.connect(database) as db:
        db.execute("INSERT INTO probe VALUES ('written by 1.42')")

    result = state_backup("restore", "--database", str(database), "--backup", backup.name)
    assert result.returncode == 0, result.stderr
    replaced = next(p for p in (tmp_path / BACKUPS).iterdir() if p.name.endswith("-replaced.db"))
    assert result.stdout == (f"state-backup: state.db: restored from {BACKUPS}/{backup.name} (Flower 1.41.0's); the "
                             f"replaced database is kept as {BACKUPS}/{replaced.name}\n")
    assert (schema_revision(database), notes(database), marker(database)) == (FLOWER_141_HEAD, ["run history"],
                                                                               "1.41.0")
    assert (schema_revision(replaced), notes(replaced)) == (FLOWER_142_HEAD, ["run history", "written by 1.42"])


@pytest.mark.parametrize(("name", "error"), [
    ("state.db", "BACKUP: 'state.db' is not a backup's name (state-flwr<release>-<UTC time>.db)"),
    ("state-flwr1.41.0-20261207T101500Z.db", "BACKUP: no backups/state-flwr1.41.0-20261207T101500Z.db on the state "
                                             "volume (it holds: none)"),
])
def test_a_restore_that_cannot_work_says_so_and_changes_nothing(tmp_path, name, error):
    database = flower_database(tmp_path / "state.db", release=FLOWER_RELEASE)
    result = state_backup("restore", "--database", str(database), "--backup", name)
    assert (result.returncode, result.stderr) == (1, f"state-backup: {error}\n")
    assert (schema_revision(database), marker(database)) == (FLOWER_142_HEAD, FLOWER_RELEASE)


def test_release_of_backup_reads_the_names_it_writes():
    assert release_of_backup("state-flwr1.43.0rc1-20270101T000000Z.db") == "1.43.0rc1"
    assert release_of_backup("state-flwr1.42.0-20270101T000000Z-replaced.db") == "1.42.0"
    assert release_of_backup("state-flwrunknown-20270101T000000Z.db") == "unknown"
    for name in ("state-flwr-20270101T000000Z.db", "state-flwr1.42.0-yesterday.db", "state-flwr1.42.0-20270101T000000Z"):
        with pytest.raises(StateError):
            release_of_backup(name)
