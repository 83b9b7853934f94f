"""Online service-time estimator per (model, device kind), as a linear function of the input size.

Pure and I/O-free: workers report ``observe`` after each request, producers ask ``estimate`` to pick an SJF
level, and the state round-trips through :meth:`ServiceTimeEstimator.to_dict` and
:meth:`ServiceTimeEstimator.from_dict` (JSON-safe), so whoever owns persistence can keep it in Redis or
Postgres.

Each key keeps exponentially-weighted moments (weighted Welford), so the fit follows a model that gets faster
after a warm-up or slower on a busier device, while old observations fade with a half-life counted in
observations, not seconds (a model that is rarely called keeps its fit). The version's declared figure is
blended in as a prior worth ``prior_weight`` observations, fading as more are made: a cold model gets a
sensible level from its first request, and one odd first measurement does not decide the next ones.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, NamedTuple

#: Format of :meth:`ServiceTimeEstimator.to_dict`; bump it when the fields change.
STATE_VERSION = 1


class EstimatorKey(NamedTuple):
    """What a service time depends on besides the input size."""

    model: str  # model version id or name, as the producer resolves it before enqueue
    device_kind: str  # "gpu", "cpu", "virtual" or a finer device name


@dataclass
class _Fit:
    """Exponentially-weighted moments of (size, service_s) for one key, plus its declared prior."""

    prior_s: float
    prior_per_unit_s: float = 0.0
    count: float = 0.0  # observations ever made, undecayed: how far the prior has faded
    weight: float = 0.0  # decayed count: how much the moments below rest on
    mean_size: float = 0.0
    mean_service_s: float = 0.0
    sxx: float = 0.0  # weighted sum of squared size deviations
    sxy: float = 0.0  # weighted sum of size x service deviations


def _check_finite(name: str, value: float, *, minimum: float = 0.0) -> float:
    value = float(value)
    if not (math.isfinite(value) and value >= minimum):
        raise ValueError(f"{name} must be a finite number >= {minimum}, got {value!r}")
    return value


class ServiceTimeEstimator:
    """Per-key online linear regression ``service_s ~ intercept + slope * size``.

    ``size`` is whatever the model's input is measured in (rows, tokens, bytes); it only has to be consistent
    per key. ``default_service_s`` is the cold start of a key that was never declared.
    """

    def __init__(
        self, *, half_life_obs: float = 200.0, prior_weight: float = 2.0, default_service_s: float = 0.1
    ) -> None:
        self.half_life_obs = _check_finite("half_life_obs", half_life_obs, minimum=1.0)
        self.prior_weight = _check_finite("prior_weight", prior_weight)
        self.default_service_s = _check_finite("default_service_s", default_service_s)
        # Old weight is multiplied by this at every observation: after half_life_obs of them it counts half.
        self._decay = 0.5 ** (1.0 / self.half_life_obs)
        self._fits: dict[EstimatorKey, _Fit] = {}

    def declare(self, key: tuple[str, str], service_s: float, per_unit_s: float = 0.0) -> None:
        """Set the cold-start figure of ``key``: the version's declared ``service_s + per_unit_s * size``.

        Observations already made are kept; only the prior they are blended with changes.
        """
        key = EstimatorKey(*key)
        service_s = _check_finite("declared service_s", service_s)
        per_unit_s = _check_finite("declared per_unit_s", per_unit_s)
        fit = self._fits.get(key)
        if fit is None:
            self._fits[key] = _Fit(prior_s=service_s, prior_per_unit_s=per_unit_s)
        else:
            fit.prior_s, fit.prior_per_unit_s = service_s, per_unit_s

    def observe(self, key: tuple[str, str], size: float, service_s: float) -> None:
        """Record that a request of ``size`` took ``service_s`` seconds on ``key``."""
        key = EstimatorKey(*key)
        size = _check_finite("size", size)
        service_s = _check_finite("service_s", service_s)
        fit = self._fits.setdefault(key, _Fit(prior_s=self.default_service_s))
        fit.count += 1.0
        fit.weight = self._decay * fit.weight + 1.0
        d_size = size - fit.mean_size
        fit.mean_size += d_size / fit.weight
        fit.mean_service_s += (service_s - fit.mean_service_s) / fit.weight
        fit.sxx = self._decay * fit.sxx + d_size * (size - fit.mean_size)
        fit.sxy = self._decay * fit.sxy + d_size * (service_s - fit.mean_service_s)

    def estimate(self, key: tuple[str, str], size: float) -> float:
        """Estimated service time in seconds of a request of ``size`` on ``key`` (never negative)."""
        size = _check_finite("size", size)
        fit = self._fits.get(EstimatorKey(*key))
        if fit is None:
            return self.default_service_s
        prior_s = fit.prior_s + fit.prior_per_unit_s * size
        if fit.weight == 0.0:
            return prior_s
        fitted_s = self._fitted(fit, size)
        # Blend by the undecayed count: the decayed weight saturates, which would keep a wrong prior forever.
        blended_s = (self.prior_weight * prior_s + fit.count * fitted_s) / (self.prior_weight + fit.count)
        return max(blended_s, 0.0)

    @staticmethod
    def _fitted(fit: _Fit, size: float) -> float:
        # With (almost) one size seen so far the slope is unknown: borrow the declared one rather than guess.
        # A negative slope is noise (bigger inputs are not faster), so it is clamped to zero.
        one_size_seen = fit.sxx / fit.weight <= 1e-12 * max(1.0, fit.mean_size**2)
        slope = fit.prior_per_unit_s if one_size_seen else max(fit.sxy / fit.sxx, 0.0)
        return fit.mean_service_s + slope * (size - fit.mean_size)

    def observations(self, key: tuple[str, str]) -> float:
        """Decayed weight of the observations of ``key`` (0 for a cold key)."""
        fit = self._fits.get(EstimatorKey(*key))
        return 0.0 if fit is None else fit.weight

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe state; keys become fields of each entry because model names may contain any separator."""
        return {
            "version": STATE_VERSION,
            "half_life_obs": self.half_life_obs,
            "prior_weight": self.prior_weight,
            "default_service_s": self.default_service_s,
            "entries": [
                {"model": key.model, "device_kind": key.device_kind, **asdict(fit)} for key, fit in self._fits.items()
            ],
        }

    @classmethod
    def from_dict(cls, state: dict[str, Any]) -> ServiceTimeEstimator:
        """Rebuild an estimator from :meth:`to_dict`; raises ``ValueError`` naming what is wrong."""
        if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
            version = state.get("version") if isinstance(state, dict) else None
            raise ValueError(f"service-time state must be a dict with version {STATE_VERSION}, got version {version!r}")
        try:
            estimator = cls(
                half_life_obs=state["half_life_obs"],
                prior_weight=state["prior_weight"],
                default_service_s=state["default_service_s"],
            )
            for entry in state["entries"]:
                key = EstimatorKey(str(entry["model"]), str(entry["device_kind"]))
                fields = {name: float(entry[name]) for name in _Fit.__dataclass_fields__}
                if not all(math.isfinite(v) for v in fields.values()) or fields["weight"] < 0.0:
                    raise ValueError(f"service-time entry for {key} has a non-finite or negative field")
                estimator._fits[key] = _Fit(**fields)
        except (KeyError, TypeError) as exc:
            raise ValueError(f"service-time state is missing or has a malformed field: {exc}") from exc
        return estimator


#: how a labelled virtual device's name starts (`MAAS_VIRTUAL_DEVICE_CLASS`); the label is its class
VIRTUAL_CLASS_PREFIX = "virtual-"


def device_class(kind: str, name: str) -> str:
    """Service times are learned per class of device: the GPU model; for virtual devices 'virtual', or
    'virtual-<label>' when the host labels them (named 'virtual-<label> device N')."""
    if kind == "gpu":
        return name
    first = name.split(" ", 1)[0]
    return first if first.startswith(VIRTUAL_CLASS_PREFIX) and len(first) > len(VIRTUAL_CLASS_PREFIX) else "virtual"
