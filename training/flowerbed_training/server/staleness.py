"""Staleness weights for asynchronous aggregation (run config `async-staleness`).

A reply trained from model version tau that arrives when the server is at
version t has staleness t - tau (an integer >= 0, counted in server updates).
Its update is scaled by s(t - tau) in (0, 1]. The three functions are the
staleness functions of FedAsync (Xie, Koyejo, Gupta 2019, "Asynchronous
Federated Optimization", arXiv:1903.03934); FedBuff (Nguyen et al., AISTATS
2022, "Federated Learning with Buffered Asynchronous Aggregation",
arXiv:2106.06639) scales its buffered updates the same way, with the
polynomial one at a = 0.5, s(t - tau) = 1 / sqrt(1 + t - tau) (the default here):

    constant:    s(t - tau) = 1
    polynomial:  s_a(t - tau) = (t - tau + 1)^(-a)                         a > 0
    hinge:       s_{a,b}(t - tau) = 1                       if t - tau <= b
                                  = 1 / (a (t - tau - b) + 1)  otherwise   a > 0, b >= 0
"""

from __future__ import annotations

from dataclasses import dataclass

from flowerbed_training.common.run_config import RunConfig


def constant(staleness: int) -> float:
    return 1.0


def polynomial(staleness: int, a: float) -> float:
    return float((staleness + 1) ** -a)


def hinge(staleness: int, a: float, b: int) -> float:
    return 1.0 if staleness <= b else 1.0 / (a * (staleness - b) + 1.0)


@dataclass(frozen=True)
class Staleness:
    """s(t - tau) as chosen by run config; call it with the staleness (int >= 0)."""

    function: str  # one of run_config.STALENESS_FUNCTIONS
    polynomial_a: float
    hinge_a: float
    hinge_b: int

    @staticmethod
    def of(config: RunConfig) -> Staleness:
        return Staleness(config.async_staleness, config.async_polynomial_a, config.async_hinge_a,
                         config.async_hinge_b)

    def __call__(self, staleness: int) -> float:
        if staleness < 0:
            raise ValueError(f"staleness {staleness} < 0: a reply cannot be newer than the server's model")
        if self.function == "polynomial":
            return polynomial(staleness, self.polynomial_a)
        if self.function == "hinge":
            return hinge(staleness, self.hinge_a, self.hinge_b)
        return constant(staleness)
