"""What the ServerApp and the ClientApp say to each other, and what a site keeps between messages.

The one owner of every key that crosses the wire (a message's records and the keys inside
them) or lands in a site's `context.state`: every module that writes or reads one imports
its name from here. The arrays/metrics/config record names and `server-round`,
`proximal-mu`, `num-examples` are Flower's own (its Message-API strategies use them), so
Flower's strategies and this app's code read the same keys.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from flwr.app import Array, ArrayRecord, RecordDict

# --- records in a message's content -------------------------------------------------------------
ARRAYS = "arrays"  # the model (both ways), or a site's compressed update (keys below)
METRICS = "metrics"  # site -> server: MetricRecord (metrics keys below)
CONFIG = "config"  # server -> site: ConfigRecord (config keys below)
SITE = "site"  # site -> server, in every reply: ConfigRecord {SITE_NAME: node config site-name}
SITE_NAME = "name"  # (node ids change when a site rejoins; its name does not)
CONTROL = "control"  # SCAFFOLD, server -> site: the server's control variate c
CONTROL_DELTA = "control-delta"  # SCAFFOLD, site -> server: c_i+ - c_i
SUMMARY = "summary"  # survey reply (study data): ConfigRecord describing the site's training split
SUMS = "sums"  # survey reply (study data): ArrayRecord of its per-feature sums

# --- the survey's message types (server/survey.py asks, client/app.py answers) -----------------------
QUERY_SITE_NAME = "query.site_name"  # built-in data: only the site's name
QUERY_DATA_SUMMARY = "query.data_summary"  # study data: what the site's data looks like

# --- config keys (train and evaluate configs) --------------------------------------------------------
SERVER_ROUND = "server-round"  # Flower's strategies set it; FedBuff: the task's sequence number
PROXIMAL_MU = "proximal-mu"  # Flower's FedProx sets it
# What the federation trains on (common/data_config.py writes and reads them)
NUM_FEATURES = "num-features"
NUM_CLASSES = "num-classes"
IMAGE_SHAPE = "image-shape"  # (channels, height, width); empty for tabular data
FEATURE_MEAN = "feature-mean"
FEATURE_STD = "feature-std"
PARTITION_SITES = "partition-sites"  # built-in data: the surveyed site names, sorted (common/partitions.py)
# Train configs only: which state the sites continue (client/site_state.py)
STATE_RUN = "state-run"  # the run lineage: the first run id of a chain of resumes
DP_SITES = "dp-sites"  # the sites that have spent local-DP budget in this lineage
# SecAgg+'s legacy configs: the model's array names (legacy Parameters carry none), newline-separated
ARRAY_KEYS = "array-keys"

# --- metrics keys --------------------------------------------------------------------------------------
NUM_EXAMPLES = "num-examples"  # train: training examples; evaluate: validation examples
TRAIN_LOSS = "train-loss"  # mean training loss over the round's local steps
EVAL_LOSS = "eval-loss"  # mean cross-entropy on the site's validation split
EVAL_ACCURACY = "eval-accuracy"
EPSILON = "epsilon"  # local DP: the epsilon this site has spent in the run so far
LEGACY_SITE_NAME = "site-name"  # SecAgg+'s legacy FitRes/EvaluateRes metrics: which site answered

# --- survey reply keys (SUMMARY, SUMS) -----------------------------------------------------------------
EXAMPLE_COUNT = "count"  # SUMMARY: training examples
FEATURE_TOTAL = "total"  # SUMS: per-feature sum
FEATURE_TOTAL_SQ = "total-sq"  # SUMS: per-feature sum of squares

# --- a compressed update in ARRAYS (common/compression.py) -----------------------------------------
INT8_CODES = "int8.codes"  # uint8 codes of every tensor, concatenated
INT8_RANGES = "int8.ranges"  # (low, step) per tensor
TOPK_INDICES = "topk.indices"  # int32 flat indices of the entries sent
TOPK_VALUES = "topk.values"  # their values
DENSE_VALUES = "dense.values"  # every entry, float32 (method none)

# --- Flower's legacy FitIns/EvaluateIns layout (the SecAgg+ path; flwr.compat's record names) -----------
LEGACY_TRAIN = "fitins"  # records "fitins.parameters", "fitins.config"
LEGACY_EVALUATE = "evaluateins"  # records "evaluateins.parameters", "evaluateins.config"

# --- site state: records in the ClientApp's context.state ------------------------------------------------
LOCAL_DP_STATE = "local-dp"  # ConfigRecord: the noise multiplier and the RDP accountant's history
NOISE_MULTIPLIER = "noise-multiplier"
HISTORY_NOISE = "history-noise"
HISTORY_RATE = "history-rate"
HISTORY_STEPS = "history-steps"
CLIENT_CONTROL = "scaffold-client-control"  # ArrayRecord: SCAFFOLD's c_i (it never leaves the site)
RESIDUAL = "compression-residual"  # ArrayRecord: what compression could not send yet (error feedback)
# What must outlive a SuperNode and a resumed run (client/site_state.py keeps these on the state volume)
PERSISTED = (LOCAL_DP_STATE, CLIENT_CONTROL, RESIDUAL)


def legacy_record(layout: str, part: str) -> str:
    """A record name of Flower's legacy layout: `legacy_record(LEGACY_TRAIN, "parameters")` = "fitins.parameters"."""
    return f"{layout}.{part}"


def to_record(arrays: Mapping[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord({key: Array(np.ascontiguousarray(value)) for key, value in arrays.items()})


def from_record(record: ArrayRecord) -> dict[str, np.ndarray]:
    return {key: array.numpy() for key, array in record.items()}


def stated_site_name(content: RecordDict) -> str | None:
    """The name a reply's sender states in its SITE record; None when it states none."""
    site = content.config_records.get(SITE)
    return str(site[SITE_NAME]) if site is not None and SITE_NAME in site else None
