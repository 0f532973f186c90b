"""Compensation policy: which excursions earn a buyer what (refund percentage or voucher).

Rules are read from config (``config/compensation.toml``) and tried in order; the first rule whose
product, severity and duration match decides. No match means no claim (e.g. a short excursion that
stayed a warning).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Final, Literal

import msgspec

from coldchain.config import load_toml
from coldchain.errors import ConfigError
from hub.detectors.base import FindingKind, Severity

SEVERITY_ORDER: Final = {Severity.INFO: 0, Severity.WARNING: 1, Severity.CRITICAL: 2}
# Findings about the product's temperature history; the rest (stuck, silent, door) are equipment or
# process signals that alarm staff but do not by themselves prove the goods were spoiled.
EXCURSION_KINDS: Final = frozenset(
    {FindingKind.OUT_OF_RANGE, FindingKind.CUMULATIVE_TIME_OUT_OF_RANGE, FindingKind.MKT_OVER_LIMIT}
)


class CompensationRule(msgspec.Struct, forbid_unknown_fields=True):
    """One line of the policy: for this product, at least this severity and duration, do this."""

    action: Literal["refund", "voucher"]
    product: str = "*"
    min_severity: Severity = Severity.CRITICAL
    min_duration_s: Annotated[float, msgspec.Meta(ge=0)] = 0.0
    refund_percent: Annotated[float, msgspec.Meta(gt=0, le=100)] | None = None
    voucher_cny: Annotated[float, msgspec.Meta(gt=0, le=100_000)] | None = None

    def __post_init__(self) -> None:
        if self.action == "refund" and self.refund_percent is None:
            raise ValueError("a refund rule needs refund_percent")
        if self.action == "voucher" and self.voucher_cny is None:
            raise ValueError("a voucher rule needs voucher_cny")

    def matches(self, product: str | None, severity: Severity, duration_s: float) -> bool:
        """Whether an excursion of ``product`` with this severity and duration falls under the rule."""
        return (
            self.product in ("*", product)
            and SEVERITY_ORDER[severity] >= SEVERITY_ORDER[self.min_severity]
            and duration_s >= self.min_duration_s
        )


class CompensationPolicy(msgspec.Struct, forbid_unknown_fields=True):
    """The rules, in order, and the endpoint (see ``[[endpoints]]``) claims are delivered to."""

    endpoint: str
    rules: list[CompensationRule]

    def decide(self, product: str | None, severity: Severity, duration_s: float) -> CompensationRule | None:
        """The first rule that matches, or ``None``."""
        return next((rule for rule in self.rules if rule.matches(product, severity, duration_s)), None)


def load_policy(path: Path) -> CompensationPolicy:
    """Load and check a compensation policy file."""
    policy = load_toml(path, CompensationPolicy)
    if not policy.rules:
        raise ConfigError("a compensation policy needs at least one [[rules]] entry", source=str(path))
    return policy
