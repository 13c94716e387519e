"""atomic_file.replacing: the old content or the new, never a part, and no shared temp file."""

import pytest

from flowerbed_training.common.atomic_file import replacing


def test_the_new_content_replaces_the_old_and_no_temporary_file_is_left(tmp_path):
    path = tmp_path / "deeper" / "state.pb"  # a missing parent is created
    with replacing(path) as file:
        file.write(b"first")
    with replacing(path) as file:
        file.write(b"second")
    assert path.read_bytes() == b"second"
    assert [p.name for p in path.parent.iterdir()] == ["state.pb"]


def test_a_failed_write_keeps_the_previous_file_and_removes_its_temporary_file(tmp_path):
    path = tmp_path / "latest.json"
    path.write_bytes(b'{"round": 3}')
    with pytest.raises(RuntimeError, match="killed mid-write"):
        with replacing(path) as file:
            file.write(b'{"rou')
            raise RuntimeError("killed mid-write")
    assert path.read_bytes() == b'{"round": 3}'
    assert [p.name for p in tmp_path.iterdir()] == ["latest.json"]


def test_two_writers_of_one_path_do_not_share_a_temporary_file(tmp_path):
    # Two tasks of one site saving at once: each must publish its whole content.
    path = tmp_path / "state.pb"
    with replacing(path) as first, replacing(path) as second:
        first.write(b"from the first task")
        second.write(b"from the second")
        assert len(list(tmp_path.iterdir())) == 2  # two temporary files, neither is `path` yet
        assert not path.exists()
    # The inner block (second) closes first, then the outer one: the outer's content wins, whole.
    assert path.read_bytes() == b"from the first task"
    assert [p.name for p in tmp_path.iterdir()] == ["state.pb"]
