"""Percentiles, result rows and the one table the benchmark prints."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any


def percentile(values: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default); nan if empty."""
    if not values:
        return math.nan
    s = sorted(values)
    k = (len(s) - 1) * q / 100
    lo = math.floor(k)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def ratio(ours: float, theirs: float) -> float:
    """``ours / theirs``; nan (n/a in the table) when there is nothing to divide
    by: no tokens counted, no peer figure."""
    return ours / theirs if theirs else math.nan


def summary(values: Sequence[float]) -> dict[str, float]:
    return {
        "n": len(values),
        "p50": percentile(values, 50),
        "p99": percentile(values, 99),
        "max": max(values) if values else math.nan,
    }


@dataclass
class Target:
    text: str
    check: Callable[[Row], bool] | None = None


@dataclass
class Row:
    scenario: str
    metric: str
    unit: str = ""
    p50: float | None = None
    p99: float | None = None
    value: float | None = None  # the max of a distribution, or a single value
    target: str = ""
    met: bool | None = None  # None: no target, or not measured
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)  # goes to the JSON only

    @classmethod
    def dist(
        cls, scenario: str, metric: str, values_ms: Sequence[float], target: Target | None = None, **kw: Any
    ) -> Row:
        s = summary(values_ms)
        row = cls(
            scenario, metric, "ms", s["p50"], s["p99"], s["max"], extra={"n": s["n"], **kw.pop("extra", {})}, **kw
        )
        return row.judge(target)

    @classmethod
    def single(
        cls, scenario: str, metric: str, value: float, unit: str = "", target: Target | None = None, **kw: Any
    ) -> Row:
        return cls(scenario, metric, unit, value=value, **kw).judge(target)

    @classmethod
    def ratio(
        cls, scenario: str, metric: str, ours: float, theirs: float, target: Target | None = None, **kw: Any
    ) -> Row:
        """One figure against another's (tokenfan / direct, tokenfan / peer), in x."""
        return cls.single(scenario, metric, ratio(ours, theirs), "x", target, **kw)

    @classmethod
    def dist_ratio(cls, scenario: str, metric: str, ours: Sequence[float], theirs: Sequence[float], **kw: Any) -> Row:
        """One distribution against another's: p50 over p50, p99 over p99, in x."""
        p50 = ratio(percentile(ours, 50), percentile(theirs, 50))
        p99 = ratio(percentile(ours, 99), percentile(theirs, 99))
        return cls(scenario, metric, "x", p50, p99, **kw)

    def judge(self, target: Target | None) -> Row:
        if target is not None:
            self.target = target.text
            if target.check is not None:
                values = [v for v in (self.p50, self.p99, self.value) if v is not None]
                self.met = None if not values or any(math.isnan(v) for v in values) else bool(target.check(self))
        return self

    def as_dict(self) -> dict[str, Any]:
        return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in asdict(self).items()}


def _fmt(value: float | None, unit: str) -> str:
    if value is None:
        return ""
    if math.isnan(value):
        return "n/a"
    if abs(value) >= 10_000:
        text = f"{value:,.0f}"
    elif abs(value) >= 100:
        text = f"{value:.0f}"
    elif abs(value) >= 10:
        text = f"{value:.1f}"
    else:
        text = f"{value:.2f}"
    return f"{text} {unit}".rstrip() if unit else text


def table(rows: Sequence[Row]) -> str:
    head = ("scenario", "metric", "p50", "p99", "max/value", "target", "met?")
    body = []
    for r in rows:
        met = "" if r.met is None else ("yes" if r.met else "NO")
        if r.met is None and r.target:
            met = "-"
        metric = r.metric + (f" ({r.note})" if r.note else "")
        body.append(
            (r.scenario, metric, _fmt(r.p50, r.unit), _fmt(r.p99, r.unit), _fmt(r.value, r.unit), r.target, met)
        )
    widths = [max(len(x[i]) for x in [head, *body]) for i in range(len(head))]
    right = {2, 3, 4}

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(head), rule, *(line(b) for b in body)])
