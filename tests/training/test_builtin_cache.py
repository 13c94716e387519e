"""A site's built-in data is prepared once and read back from its state volume (builtin_cache.py)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from flwr.app import ConfigRecord, Message, RecordDict
from flwr.common.serde import message_to_proto

from flowerbed_training.client import builtin_cache
from flowerbed_training.client.app import app as client_app
from flowerbed_training.client.node_config import NodeConfig
from flowerbed_training.common import models
from flowerbed_training.common.builtin_data import builtin_share, builtin_site_split
from flowerbed_training.common.partitions import Partition
from flowerbed_training.common.protocol import ARRAYS, CONFIG, to_record
from flowerbed_training.server.survey import survey_sites
from tests.inprocess import InProcessGrid, builtin_sites, config_with, run_config_with, run_federation

REPO = Path(__file__).resolve().parents[2]


def share_of(partition: Partition = Partition(0, 3), **overrides: object):
    return builtin_share(config_with({"dataset": "builtin:breast-cancer", **overrides}), partition)


@pytest.fixture
def builds(monkeypatch):
    """How many times the share was built from scratch (cache misses)."""
    calls: list[object] = []

    def counting(share):
        calls.append(share)
        return builtin_site_split(share)

    monkeypatch.setattr(builtin_cache, "builtin_site_split", counting)
    return calls


def assert_same_split(a, b):
    for x, y in ((a.train, b.train), (a.test, b.test)):
        np.testing.assert_array_equal(x.x, y.x)
        np.testing.assert_array_equal(x.y, y.y)
        assert x.spec == y.spec and x.x.dtype == np.float32 and x.y.dtype == np.int64


def test_the_second_read_comes_from_disk_and_equals_the_built_split(tmp_path, builds):
    share = share_of()
    first = builtin_cache.site_split(share, tmp_path)
    second = builtin_cache.site_split(share, tmp_path)
    assert len(builds) == 1
    assert_same_split(first, builtin_site_split(share))
    assert_same_split(second, first)
    assert [p.name for p in tmp_path.iterdir()] == [f"{builtin_cache.key(share)}.npz"]


@pytest.mark.parametrize("change", [
    {"dataset": "builtin:digits"}, {"seed": 7}, {"test-fraction": 0.3}, {"partitioning": "iid"},
    {"dirichlet-alpha": 1.0}, {"partitioning": "labels", "labels-per-site": 1},
])
def test_a_value_that_shapes_the_data_misses_the_cache(tmp_path, builds, change):
    builtin_cache.site_split(share_of(), tmp_path)
    changed = builtin_cache.site_split(share_of(**change), tmp_path)
    assert len(builds) == 2
    assert_same_split(changed, builtin_site_split(share_of(**change)))


@pytest.mark.parametrize("partition", [Partition(1, 3), Partition(0, 4)])
def test_another_partition_assignment_misses_the_cache(tmp_path, builds, partition):
    builtin_cache.site_split(share_of(), tmp_path)
    builtin_cache.site_split(share_of(partition), tmp_path)
    assert len(builds) == 2


@pytest.mark.parametrize("change", [{"lr": 0.5}, {"local-epochs": 5}, {"strategy": "fedprox"},
                                    {"num-server-rounds": 3}, {"label-column": "y"}])
def test_a_value_that_does_not_shape_the_data_hits_the_cache(tmp_path, builds, change):
    builtin_cache.site_split(share_of(), tmp_path)
    builtin_cache.site_split(share_of(**change), tmp_path)
    assert len(builds) == 1


@pytest.mark.parametrize("content", [b"", b"not an npz", b"PK\x03\x04truncated"])
def test_an_unreadable_entry_is_rebuilt_and_replaced(tmp_path, builds, content):
    share = share_of()
    path = tmp_path / f"{builtin_cache.key(share)}.npz"
    path.write_bytes(content)
    split = builtin_cache.site_split(share, tmp_path)
    assert_same_split(split, builtin_site_split(share))
    assert len(builds) == 1
    builtin_cache.site_split(share, tmp_path)
    assert len(builds) == 1, "the rebuilt entry replaced the broken one"


def test_an_entry_with_the_wrong_arrays_is_rebuilt(tmp_path, builds):
    share = share_of()
    good = builtin_site_split(share)
    np.savez(tmp_path / f"{builtin_cache.key(share)}.npz", **{
        "train-x": good.train.x.astype(np.float64), "train-y": good.train.y, "test-x": good.test.x,
        "test-y": good.test.y, "spec": np.array([30, 2])})
    assert_same_split(builtin_cache.site_split(share, tmp_path), good)
    assert len(builds) == 1


def test_a_writer_that_dies_midway_leaves_the_previous_entry_and_no_partial_file(tmp_path, monkeypatch):
    share = share_of()
    builtin_cache.site_split(share, tmp_path)
    path = tmp_path / f"{builtin_cache.key(share)}.npz"
    before = path.read_bytes()

    def dies_midway(file, **arrays):
        file.write(before[: len(before) // 2])
        raise OSError("No space left on device")

    monkeypatch.setattr(builtin_cache.np, "savez", dies_midway)
    path.write_bytes(b"broken")  # forces a rebuild, whose write then fails halfway
    split = builtin_cache.site_split(share, tmp_path)

    assert_same_split(split, builtin_site_split(share))  # the message still gets its data
    assert path.read_bytes() == b"broken", "the half-written file never took the entry's name"
    assert [p.name for p in tmp_path.iterdir()] == [path.name], "no temporary file is left behind"


def test_a_cache_directory_that_cannot_be_written_costs_only_the_speed_up(tmp_path, builds):
    blocked = tmp_path / "a-file"
    blocked.write_text("not a directory")
    share = share_of()
    assert_same_split(builtin_cache.site_split(share, blocked), builtin_site_split(share))
    assert len(builds) == 1


def test_the_cache_lives_on_the_state_volume_or_in_scratch_space(tmp_path):
    assert builtin_cache.cache_dir(NodeConfig.parse({"state-dir": "/state"})) == Path("/state/.builtin-data")
    assert builtin_cache.cache_dir(NodeConfig.parse({})).name == builtin_cache.SCRATCH_DIR


def test_sites_build_their_share_once_per_run_and_not_again_in_the_next(tmp_path, builds):
    sites = builtin_sites(3, state_root=tmp_path / "state")
    run_federation(sites, run_config_with({"artifacts-root": str(tmp_path / "a"), "num-server-rounds": 2}))
    assert len(builds) == 3, "one build per site: the survey asks the sites for no data"
    for site in sites:
        assert len(list((Path(site.node_config["state-dir"]) / builtin_cache.CACHE_DIR).glob("*.npz"))) == 1
    run_federation(sites, run_config_with({"artifacts-root": str(tmp_path / "a"), "num-server-rounds": 2,
                                           "lr": 0.05}), run_id=2)
    assert len(builds) == 3


# --- what a message imports -------------------------------------------------------------------------

# flwr.superlink.grid: the SuperLink's state modules; torch._dynamo: what any torch Optimizer imports
# (task.PlainSgd); flowerbed_training.server: the ServerApp's part (a ClientApp imports common/ only).
HEAVY = ("sklearn", "matplotlib", "opacus", "flwr.superlink.grid", "torch._dynamo", "flowerbed_training.server")
# One ClientApp message in a fresh interpreter, as Flower runs each message; prints the heavy
# modules it imported.
_ONE_MESSAGE = """
import json, sys
from pathlib import Path
from flwr.common.serde import message_from_proto
from flwr.proto.message_pb2 import Message as ProtoMessage
from flowerbed_training.client.app import app
from tests.inprocess import InProcessGrid, Site

request = json.loads(sys.argv[1])
site = Site(node_id=101, node_config=request["node-config"])
grid = InProcessGrid(app, [site], request["run-config"])
for path in request["messages"]:
    proto = ProtoMessage()
    proto.ParseFromString(Path(path).read_bytes())
    [reply] = grid.pull_messages(grid.push_messages([message_from_proto(proto)]))
    assert not reply.has_error(), reply.error.reason
print(json.dumps([name for name in %r if name in sys.modules]))
""" % (HEAVY,)


def test_a_message_on_a_warm_cache_imports_nothing_heavy(tmp_path, server_identity):
    run_config = run_config_with({"dataset": "builtin:breast-cancer"})
    config = config_with({"dataset": "builtin:breast-cancer"})
    sites = builtin_sites(3, state_root=tmp_path / "state")
    federation = survey_sites(InProcessGrid(client_app, sites, run_config), config)
    weights = to_record(models.get_weights(models.model_for(config, federation.spec)))
    messages = []
    for message_type in ("train", "evaluate"):
        content = RecordDict({ARRAYS: weights, CONFIG: ConfigRecord({**federation.config(), "server-round": 1})})
        path = tmp_path / f"{message_type}.pb"
        path.write_bytes(message_to_proto(Message(content, dst_node_id=101, message_type=message_type))
                         .SerializeToString())
        messages.append(str(path))
    request = json.dumps({"node-config": sites[0].node_config, "run-config": run_config, "messages": messages})

    def heavy_imports() -> list[str]:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "training")])}
        done = subprocess.run([sys.executable, "-c", _ONE_MESSAGE, request], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=300, check=False)
        assert done.returncode == 0, done.stderr[-3000:]
        return json.loads(done.stdout.strip().splitlines()[-1])

    assert heavy_imports() == ["sklearn"], "cold cache: the site builds its share from scikit-learn's data"
    assert heavy_imports() == [], "warm cache: the messages read the prepared arrays only"
