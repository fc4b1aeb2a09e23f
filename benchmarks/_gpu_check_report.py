"""The markdown report of ``gpu_check.py``, rendered from its JSON report."""

from __future__ import annotations

from typing import Any

from _gpu_check_core import OK_STATUSES

SPEED_COLUMNS = [
    ("optimizer", "row", "{}"),
    ("median ms", "median_ms", "{:.2f}"),
    ("ratio vs AdamW fused", "ratio_vs_adamw_fused", "{:.2f}x"),
    ("state bytes/param", "state_bytes_per_param", "{:.2f}"),
    ("peak allocated GiB", "peak_allocated_gib", "{:.2f}"),
    ("step peak extra MiB", "step_peak_extra_mib", "{:.1f}"),
    ("first step s", "first_step_s", "{:.2f}"),
]
GPT2_COLUMNS = [
    ("run", "run", "{}"),
    ("optimizer", "optimizer", "{}"),
    ("params", "param_dtype", "{}"),
    ("first loss", "first_loss", "{:.3f}"),
    ("mean of first 5", "first5_mean", "{:.3f}"),
    ("mean of last 5", "last5_mean", "{:.3f}"),
]


def _cell(fmt: str, value: Any) -> str:
    if value is None:
        return "n/a"
    try:
        return fmt.format(value)
    except (TypeError, ValueError):
        return str(value)


def _value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return "" if value is None else str(value)


def _table(columns: list[tuple[str, str, str]], rows: list[dict[str, Any]]) -> list[str]:
    lines = ["| " + " | ".join(c[0] for c in columns) + " |"]
    lines.append("|---|" + "---:|" * (len(columns) - 1))
    for row in rows:
        lines.append("| " + " | ".join(_cell(fmt, row.get(key)) for _, key, fmt in columns) + " |")
    return lines


def markdown(report: dict[str, Any]) -> str:
    """The report as markdown: a summary, each section's checks, the speed and GPT-2 tables."""
    m = report["machine"]
    verdict = "all checks passed" if report.get("passed") else "SOME CHECKS FAILED"
    lines = ["# gpu_check", "", f"{verdict}; {report.get('elapsed_s', 0):.0f} s in all."]
    lines += ["", "Machine: " + ", ".join(f"{k} {v}" for k, v in m.items() if v is not None)]
    lines += ["", "| section | status | checks passed | skipped | seconds | budget s |"]
    lines.append("|---|---|---:|---:|---:|---:|")
    for name, s in report["sections"].items():
        passed = sum(c["status"] == "pass" for c in s["checks"])
        skipped = sum(c["status"] == "skipped" for c in s["checks"])
        seconds = s.get("wall_s", s["elapsed_s"])
        lines.append(f"| {name} | {s['status']} | {passed}/{len(s['checks'])} | {skipped} "
                     f"| {seconds:.1f} | {s['budget_s']:.0f} |")  # fmt: skip
    for name, s in report["sections"].items():
        lines += ["", f"## {name}: {s['status']}", ""]
        lines += [f"- {note}" for note in s["notes"]]
        if s["error"]:
            lines += ["", "```", s["error"][-3000:], "```"]
        for table, rows in s["tables"].items():
            if table.startswith("speed"):
                lines += ["", f"### {rows[0]['set']}: {rows[0]['numel']:,} parameters", ""]
                lines += _table(SPEED_COLUMNS, rows)
            elif table == "gpt2":
                lines += ["", *_table(GPT2_COLUMNS, rows)]
        if s["checks"]:
            lines += ["", "| check | status | value | bound | detail |", "|---|---|---:|---|---|"]
        for c in s["checks"]:
            status = c["status"] if c["status"] in OK_STATUSES else f"**{c['status']}**"
            detail = str(c.get("detail") or "").replace("|", "\\|").replace("\n", " ")[:300]
            lines.append(f"| {c['name']} | {status} | {_value(c['value'])} | "
                         f"{_value(c['bound'])} | {detail} |")  # fmt: skip
    return "\n".join(lines) + "\n"
