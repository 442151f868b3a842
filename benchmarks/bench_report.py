"""Turn the children's samples into figures, the table (with targets) and its text form."""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any

from bench_adapters import IMPLEMENTATIONS

Samples = dict[str, list[float]]

#: Samples kept only under ``samples``, never turned into a median (the memory growth curve).
_CURVES = ("growth_curve_messages", "growth_curve_rss_mib")


def percentile(samples: list[float], q: float) -> float:
    """Return the q-th percentile (0-100) of samples, interpolating linearly."""
    ordered = sorted(samples)
    position = (len(ordered) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def figures(children: list[dict[str, Any]]) -> dict[str, Any]:
    """Merge the samples of one implementation's children on one broker; medians of rounds.

    ``peak_rss_mib`` is the largest peak of the children other than the memory growth child,
    whose own peak is ``growth_peak_rss_mib`` (and its middleware ``growth_middleware``).
    """
    samples: Samples = {}
    for child in children:
        for key, values in child["samples"].items():
            samples.setdefault(key, []).extend(values)
    others = [c for c in children if c["workloads"] != ["growth"]]
    growth = [c for c in children if c["workloads"] == ["growth"]]
    out: dict[str, Any] = {
        "version": children[0]["version"],
        "middleware": (others or children)[0]["middleware"],
        "children": len(children),
    }
    if others:
        out["peak_rss_mib"] = max(c["peak_rss_mib"] for c in others)
    if growth:
        out["growth_middleware"] = growth[0]["middleware"]
    for key, values in samples.items():
        if key in _CURVES:
            continue
        if key == "rt_ms":
            if values:
                out.update(
                    rt_samples=len(values),
                    rt_p50_ms=percentile(values, 50),
                    rt_p95_ms=percentile(values, 95),
                    rt_p99_ms=percentile(values, 99),
                    rt_mean_ms=statistics.fmean(values),
                )
        elif values:
            out[key] = statistics.median(values)
    out["samples"] = samples
    return out


@dataclass(frozen=True)
class Row:
    """One figure of the table and which way is better."""

    label: str
    key: str
    unit: str
    higher_is_better: bool
    fmt: str


ROWS = (
    Row("send rate, send() x N", "send_rate", "msg/s", True, "{:,.0f}"),
    Row("bulk send rate", "bulk_rate", "msg/s", True, "{:,.0f}"),
    Row("processing, in-process 8 threads", "process_rate", "msg/s", True, "{:,.0f}"),
    Row("processing, CLI 2x8, boot included", "cli_rate", "msg/s", True, "{:,.0f}"),
    Row("processing, CLI 2x8, after boot", "cli_rate_after_boot", "msg/s", True, "{:,.0f}"),
    Row("CLI boot (first message taken)", "cli_boot_s", "s", False, "{:.2f}"),
    Row("round trip p50", "rt_p50_ms", "ms", False, "{:.3f}"),
    Row("round trip p95", "rt_p95_ms", "ms", False, "{:.3f}"),
    Row("round trip p99", "rt_p99_ms", "ms", False, "{:.3f}"),
    Row("CPU per message, in-process", "cpu_us_per_message", "us", False, "{:.1f}"),
    Row("CPU per message, CLI (all procs)", "cli_cpu_us_per_message", "us", False, "{:.1f}"),
    Row("peak RSS (benchmark child)", "peak_rss_mib", "MiB", False, "{:.1f}"),
    Row("idle worker CPU, 8 threads", "idle_cpu_pct", "% core", False, "{:.3f}"),
    # memory growth (issue #15); format_table puts the sizes into the labels
    Row("growth: RSS after {first}", "growth_rss_first_mib", "MiB", False, "{:.1f}"),
    Row("growth: RSS after {messages}", "growth_rss_last_mib", "MiB", False, "{:.1f}"),
    Row("growth ratio, RSS {messages} / {first}", "growth_ratio", "x", False, "{:.2f}"),
    Row("growth: send_many + process", "growth_rate", "msg/s", True, "{:,.0f}"),
)


@dataclass(frozen=True)
class Goal:
    """A target of issue #9: on the ratio against Dramatiq, or on nbqueue's own value."""

    on_ratio: bool
    bound: float
    at_least: bool

    def text(self, unit: str) -> str:
        sign = ">=" if self.at_least else "<="
        if self.on_ratio or unit == "x":
            return f"{sign}{self.bound:g}x"
        return f"{sign}{self.bound:,g} {unit}"

    def met(self, value: float | None, ratio_value: float | str | None) -> bool | None:
        subject = ratio_value if self.on_ratio else value
        if subject is None:
            return None
        if subject == "inf":
            return self.at_least
        number = float(subject)
        return number >= self.bound if self.at_least else number <= self.bound


TARGETS: dict[tuple[str, str], Goal] = {
    ("memory", "process_rate"): Goal(True, 3, True),
    ("redis", "process_rate"): Goal(True, 3, True),
    ("rabbitmq", "process_rate"): Goal(True, 2, True),
    ("memory", "rt_p50_ms"): Goal(False, 1, False),
    ("redis", "rt_p50_ms"): Goal(False, 2, False),
    ("redis", "bulk_rate"): Goal(False, 50000, True),
    # issue #15: RSS after 1,000,000 no-op messages <= 1.5 x RSS after 10,000
    ("memory", "growth_ratio"): Goal(False, 1.5, False),
}


def ratio(row: Row, ours: float | None, theirs: float | None) -> float | str | None:
    """Return nbqueue vs Dramatiq, oriented so that > 1 means nbqueue is better."""
    if ours is None or theirs is None:
        return None
    numerator, denominator = (ours, theirs) if row.higher_is_better else (theirs, ours)
    if denominator <= 0:
        return "inf" if numerator > 0 else None  # a string: JSON has no infinity
    return numerator / denominator


def build_table(results: dict[str, dict[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    """Return one record per broker x figure with every implementation, ratios and target."""
    table = []
    for broker, by_impl in results.items():
        sizes = next((f for f in by_impl.values() if "growth_messages" in f), {})
        counts = {
            "first": _count(sizes.get("growth_first")),
            "messages": _count(sizes.get("growth_messages")),
        }
        for row in ROWS:
            values = {impl: by_impl.get(impl, {}).get(row.key) for impl in IMPLEMENTATIONS}
            if all(v is None for v in values.values()):
                continue
            record: dict[str, Any] = {
                "broker": broker,
                "workload": row.label.format(**counts),
                "key": row.key,
                "unit": row.unit,
                "better": "higher" if row.higher_is_better else "lower",
                **values,
                "ratio": ratio(row, values["nbqueue"], values["dramatiq"]),
                "ratio_matched": ratio(row, values["nbqueue-matched"], values["dramatiq"]),
            }
            goal = TARGETS.get((broker, row.key))
            if goal is not None:
                record["target"] = goal.text(row.unit)
                record["target_met"] = {
                    "nbqueue": goal.met(values["nbqueue"], record["ratio"]),
                    "nbqueue-matched": goal.met(values["nbqueue-matched"], record["ratio_matched"]),
                }
            table.append(record)
    return table


def _count(n: float | None) -> str:
    """Return a message count as ``10k`` or ``1M`` (exact multiples), else with separators."""
    if n is None:
        return "N"
    n = int(n)
    if n >= 1_000_000 and n % 1_000_000 == 0:
        return f"{n // 1_000_000}M"
    if n >= 1000 and n % 1000 == 0:
        return f"{n // 1000}k"
    return f"{n:,}"


def _verdict(met: bool | None) -> str:
    return "-" if met is None else ("met" if met else "MISSED")


def format_table(table: list[dict[str, Any]], results: dict[str, dict[str, Any]]) -> str:
    """Render the table as aligned text."""
    formats = {row.key: row.fmt for row in ROWS}
    header = ["broker", "workload", "nbqueue", "nbq matched", "dramatiq", "ratio", "ratio m.",
              "unit", "target (nbqueue / matched)"]  # fmt: skip
    lines = []
    for record in table:
        label = record["workload"]
        if record["key"].startswith("rt_"):
            by_impl = results.get(record["broker"], {})
            counts = [str(by_impl.get(i, {}).get("rt_samples", "-")) for i in IMPLEMENTATIONS]
            label += f" n={'/'.join(counts)}"
        cells = [record["broker"], label]
        for impl in IMPLEMENTATIONS:
            value = record[impl]
            cells.append("-" if value is None else formats[record["key"]].format(value))
        for key in ("ratio", "ratio_matched"):
            r = record[key]
            cells.append("-" if r is None else (r if isinstance(r, str) else f"{r:.2f}x"))
        unit = record["unit"] + (" ^" if record["better"] == "higher" else " v")
        cells.append(unit)
        if "target" in record:
            met = record["target_met"]
            cells.append(
                f"{record['target']}: {_verdict(met['nbqueue'])} / "
                f"{_verdict(met['nbqueue-matched'])}"
            )
        else:
            cells.append("")
        lines.append(cells)
    widths = [max(len(c[i]) for c in [header, *lines]) for i in range(len(header))]

    def render(cells: list[str]) -> str:
        return " | ".join(
            c.ljust(widths[i]) if i in (0, 1, 7, 8) else c.rjust(widths[i])
            for i, c in enumerate(cells)
        ).rstrip()

    separator = "-|-".join("-" * w for w in widths)
    return "\n".join([render(header), separator, *(render(c) for c in lines)])


def format_spread(results: dict[str, dict[str, Any]]) -> str:
    """Render min..max of the per-round figures, to judge the noise behind the medians."""
    lines = []
    for broker, by_impl in results.items():
        for label, key, fmt in (
            ("send", "send_rate", "{:,.0f}"),
            ("bulk", "bulk_rate", "{:,.0f}"),
            ("process", "process_rate", "{:,.0f}"),
            ("cli", "cli_rate", "{:,.0f}"),
        ):
            parts = []
            for impl in IMPLEMENTATIONS:
                values = by_impl.get(impl, {}).get("samples", {}).get(key)
                if values and len(values) > 1:
                    low, high = fmt.format(min(values)), fmt.format(max(values))
                    parts.append(f"{impl} {low}..{high}")
            if parts:
                lines.append(f"  {broker} {label}: " + ", ".join(parts))
    if not lines:
        return ""
    return "min..max of the rounds behind the medians:\n" + "\n".join(lines)
