"""The run config (`[tool.flwr.app.config]`), typed and validated: the one place a key is read.

`RunConfig.parse(context.run_config)` runs once per ServerApp run and once per
ClientApp message. The defaults live only in `pyproject.toml`: Flower fuses them
with `flwr run --run-config` overrides, so every key is present; a missing key
means the caller did not fuse (an error, not a silent default here). Each
field's rule is declared next to it; rules that span keys are in `_combinations`.
A bad value raises `RunConfigError` naming the key and what is allowed.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from flowerbed_training.common.strategies import STRATEGIES


class RunConfigError(ValueError):
    """A run-config value cannot work; the message names the key and what is allowed."""


def _rule(text: str, ok: Callable[[Any], bool]) -> Any:
    return field(metadata={"rule": text, "ok": ok})


def _one_of(*allowed: str) -> Any:
    return _rule(f"must be one of {', '.join(allowed)}", lambda v: v in allowed)


def _positive() -> Any:
    return _rule("must be > 0", lambda v: v > 0)


def _at_least(low: float) -> Any:
    return _rule(f"must be >= {low}", lambda v: v >= low)


def _anything() -> Any:
    return _rule("", lambda v: True)


def _dataset(value: str) -> bool:
    if value.startswith(BUILTIN_PREFIX):
        return value.removeprefix(BUILTIN_PREFIX) in BUILTIN_SOURCES
    return value.count("/") == 1 and ".." not in value and not value.startswith("/") and not value.endswith("/")


# The values a key allows, for the modules that implement them (data, models, staleness, ...).
BUILTIN_PREFIX = "builtin:"
BUILTIN_SOURCES = ("breast-cancer", "digits")  # scikit-learn's bundled datasets (common/builtin_data.py)
PARTITIONINGS = ("iid", "dirichlet", "labels")
MODELS = ("auto", "mlp", "cnn")
STALENESS_FUNCTIONS = ("constant", "polynomial", "hinge")  # server/staleness.py
CENTRAL_DP_MODES = ("off", "server", "client")
COMPRESSION_METHODS = ("none", "int8", "topk")


@dataclass(frozen=True)
class RunConfig:
    """One field per key (kebab-case key = field name with `-` for `_`); README.md says what each does."""

    # --- what to train ---
    num_server_rounds: int = _at_least(1)
    dataset: str = _rule(f"must be {' or '.join(BUILTIN_PREFIX + s for s in BUILTIN_SOURCES)} or "
                         "<study>/<dataset>", _dataset)
    label_column: str = _anything()
    model: str = _one_of(*MODELS)
    hidden_units: int = _at_least(1)
    partitioning: str = _one_of(*PARTITIONINGS)
    dirichlet_alpha: float = _positive()
    labels_per_site: int = _at_least(1)
    test_fraction: float = _rule("must be in (0, 1)", lambda v: 0 < v < 1)
    seed: int = _anything()
    # --- local training (each site) ---
    local_epochs: int = _at_least(1)
    batch_size: int = _at_least(1)
    lr: float = _positive()
    local_max_grad_norm: float = _rule("must be >= 0 (0: no clipping)", lambda v: v >= 0)
    amp: bool = _anything()
    # --- aggregation ---
    strategy: str = _one_of(*STRATEGIES)
    proximal_mu: float = _at_least(0)
    server_lr: float = _positive()
    scaffold_global_lr: float = _positive()
    server_tau: float = _positive()
    server_beta_1: float = _rule("must be in [0, 1)", lambda v: 0 <= v < 1)
    server_beta_2: float = _rule("must be in [0, 1)", lambda v: 0 <= v < 1)
    trimmed_beta: float = _rule("must be in [0, 0.5)", lambda v: 0 <= v < 0.5)
    krum_malicious: int = _at_least(0)
    # --- asynchronous aggregation (strategy fedbuff) ---
    async_buffer_size: int = _at_least(1)
    async_staleness: str = _one_of(*STALENESS_FUNCTIONS)
    async_polynomial_a: float = _positive()
    async_hinge_a: float = _positive()
    async_hinge_b: int = _at_least(0)
    async_max_staleness: int = _at_least(0)
    async_server_lr: float = _positive()
    async_time_budget: float = _rule("must be >= 0 seconds (0: none)", lambda v: v >= 0)
    # --- privacy ---
    local_dp: bool = _anything()
    local_dp_epsilon: float = _positive()
    local_dp_delta: float = _rule("must be in (0, 1)", lambda v: 0 < v < 1)
    local_dp_max_grad_norm: float = _positive()
    central_dp: str = _one_of(*CENTRAL_DP_MODES)
    central_dp_noise_multiplier: float = _at_least(0)
    central_dp_clipping_norm: float = _positive()
    central_dp_delta: float = _rule("must be in (0, 1)", lambda v: 0 < v < 1)
    # --- secure aggregation ---
    secagg: bool = _anything()
    secagg_num_shares: int = _at_least(3)
    secagg_reconstruction_threshold: int = _at_least(2)
    secagg_clipping_range: float = _positive()
    secagg_max_weight: float = _positive()
    # --- communication ---
    compression: str = _one_of(*COMPRESSION_METHODS)
    compression_topk_fraction: float = _rule("must be in (0, 1]", lambda v: 0 < v <= 1)
    # --- participation, stragglers and failures ---
    fraction_train: float = _rule("must be in (0, 1]", lambda v: 0 < v <= 1)
    fraction_evaluate: float = _rule("must be in [0, 1]", lambda v: 0 <= v <= 1)
    min_train_sites: int = _at_least(1)
    min_available_sites: int = _at_least(1)
    round_timeout: float = _rule("must be > 0 seconds", lambda v: v > 0)
    # --- results ---
    artifacts_root: str = _rule("must not be empty", bool)
    resume: str = _rule('must be "" (a fresh run), "latest" or a run id (digits)',
                        lambda v: v in ("", "latest") or v.isdigit())
    checkpoint_keep: int = _at_least(1)

    @staticmethod
    def parse(run_config: Mapping[str, Any]) -> RunConfig:
        """Check every key's type and rule, then the rules across keys."""
        fields = {f.name.replace("_", "-"): f for f in dataclasses.fields(RunConfig)}
        unknown = sorted(set(run_config) - set(fields))
        if unknown:
            raise RunConfigError(f"run config {', '.join(unknown)}: not a key of this app; "
                                 f"allowed: {', '.join(sorted(fields))}")
        types = typing.get_type_hints(RunConfig)
        values = {f.name: _checked(key, run_config, types[f.name], f.metadata) for key, f in fields.items()}
        config = RunConfig(**values)
        _combinations(config)
        return config

    def key(self, name: str) -> Any:
        """The value of kebab-case key `name` (for messages that name keys)."""
        return getattr(self, name.replace("-", "_"))

    @property
    def protections(self) -> list[str]:
        """Secure aggregation, differential privacy and compression in force, as the run's report names them."""
        found = ["SecAgg+"] if self.secagg else []
        found += ["local DP"] if self.local_dp else []
        found += [f"central DP ({self.central_dp}-side clipping)"] if self.central_dp != "off" else []
        found += [f"{self.compression} compression"] if self.compression != "none" else []
        return found

    @property
    def builtin(self) -> bool:
        """Built-in (scikit-learn) data: the server holds a global test set and assigns partitions."""
        return self.dataset.startswith(BUILTIN_PREFIX)


def _checked(key: str, run_config: Mapping[str, Any], kind: type, metadata: Mapping[str, Any]) -> Any:
    if key not in run_config:
        raise RunConfigError(f"run config {key}: missing; training/pyproject.toml declares every key with its "
                             "default (pass the config as Flower fuses it)")
    value = run_config[key]
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise RunConfigError(f"run config {key}: {value!r} must be a {kind.__name__}")
    if not metadata["ok"](value):
        raise RunConfigError(f"run config {key}: {value!r} {metadata['rule']}")
    return value


def _combinations(c: RunConfig) -> None:
    """The rules that span keys (each error names the key to change and why)."""
    strategy = STRATEGIES[c.strategy]
    rules: list[tuple[bool, str, str]] = []
    if strategy.asynchronous:
        # FedBuff keeps every site busy and steps on a buffer of replies: what needs one
        # synchronous round (its sum, its sampled sites, a budget per round) cannot run with it.
        why = f"with strategy {c.strategy!r} (no synchronous rounds)"
        rules += [
            (not c.secagg, "secagg", f"must be false {why}: SecAgg+ unmasks the sum of one round's replies"),
            (not c.local_dp, "local-dp", f"must be false {why}: the local-DP budget is calibrated for "
             "num-server-rounds trainings per site, and a fast site trains far more often"),
            (c.fraction_train == 1.0, "fraction-train", f"must be 1.0 {why}: every connected site is kept busy"),
        ]
    rules += [
        (c.min_available_sites >= c.min_train_sites, "min-available-sites", "must be >= min-train-sites"),
        (not (c.local_dp and c.amp), "amp",
         # The loss scaler would scale the per-sample gradients that Opacus clips.
         "must be false with local-dp"),
        (c.central_dp == "off" or strategy.central_dp, "central-dp",
         f"must be 'off' with strategy {c.strategy!r} ({strategy.central_dp_conflict})"),
        (not (c.central_dp == "client" and c.compression != "none"), "central-dp",
         "'client' clipping needs the plain weights in the reply; use 'server' or compression 'none'"),
        (c.secagg_reconstruction_threshold < c.secagg_num_shares, "secagg-reconstruction-threshold",
         "must be < secagg-num-shares"),
        # SecAgg+ sums the sites' plain models: nothing that needs one site's update on the
        # server (or another aggregate) can run with it.
        (not c.secagg or strategy.secagg, "strategy",
         f"must be one of {', '.join(n for n, s in STRATEGIES.items() if s.secagg)} when secagg is true"),
        (not c.secagg or c.compression == "none", "compression", "must be 'none' when secagg is true"),
        (not c.secagg or c.central_dp == "off", "central-dp", "must be 'off' when secagg is true"),
    ]
    if c.strategy == "krum":
        rules.append((c.min_train_sites > 2 * c.krum_malicious + 2, "krum-malicious",
                      f"needs min-train-sites > 2*krum-malicious + 2 = {2 * c.krum_malicious + 2} "
                      "(Krum's guarantee)"))
    for ok, key, rule in rules:
        if not ok:
            raise RunConfigError(f"run config {key}: {c.key(key)!r} {rule}")
