"""The gate's decision as a section of the evaluation report.

Why in the kernel: evaluate writes ``report.html`` before deploy has run, and no stage imports
another. Evaluate renders an empty decision section between two markers; deploy replaces it with
``deploy/decision.json``'s verdict, registered version, aliases and reasons, and writes the result
as its own output ``deploy/report.html`` (evaluate's outputs stay as evaluate wrote them).
"""

from __future__ import annotations

import html
from collections.abc import Mapping
from typing import Any

START = "<!-- lora-factory:decision -->"
END = "<!-- /lora-factory:decision -->"
PENDING = "<p>Deploy has not run yet: no gate decision, no registered version.</p>"


def _state(check: Mapping[str, Any]) -> str:
    return "skipped" if check.get("skipped") else "pass" if check.get("passed") else "fail"


def decision_section(record: Mapping[str, Any] | None) -> str:
    """The section (markers included) for a ``decision.json`` record, or the pending note."""
    if record is None:
        return f"{START}<h2>Gate decision</h2>{PENDING}{END}"
    verdict = str(record.get("verdict", "unknown"))
    css = "pass" if verdict == "promoted" else "fail"
    checks = "".join(
        f"<tr><td>{html.escape(str(c.get('name', '')))}</td><td>{html.escape(str(c.get('detail', '')))}</td>"
        f"<td class='{_state(c)}'>{_state(c)}</td></tr>" for c in record.get("checks") or [])
    reasons = "".join(f"<li>{html.escape(str(r))}</li>" for r in record.get("reasons") or [])
    approval = (record.get("approval") or {}).get("note")
    return (f"{START}<h2>Gate decision: <span class='{css}'>{html.escape(verdict)}</span></h2>"
            f"<p>Registered model <code>{html.escape(str(record.get('registered_model', '')))}</code> version "
            f"<b>{html.escape(str(record.get('version', '')))}</b> (<code>{html.escape(str(record.get('model_uri', '')))}"
            f"</code>), aliases {html.escape(', '.join(record.get('aliases') or []) or 'none')}. "
            f"{html.escape(str(record.get('reason', '')))}</p>"
            + (f"<p>Approval: {html.escape(str(approval))}</p>" if approval else "")
            + (f"<ul>{reasons}</ul>" if reasons else "")
            + (f"<table><tr><th>check</th><th>detail</th><th></th></tr>{checks}</table>" if checks else "")
            + END)


def with_decision(report: str, record: Mapping[str, Any]) -> str:
    """``report`` with its decision section replaced by ``record``'s; a report without the
    markers (written before they existed) gets the section before ``</body>``."""
    section = decision_section(record)
    head, start, rest = report.partition(START)
    if start:
        _, end, tail = rest.partition(END)
        if end:
            return head + section + tail
    body_at = report.rfind("</body>")
    return report[:body_at] + section + report[body_at:] if body_at >= 0 else report + section
