"""The doctor's optional narrative (``doctor.narrative``): one short paragraph on the findings,
written by the label stage's LLM endpoint (``label.llm``, the kernel's ``ChatClient``).

Why optional and never fatal: the findings and scores are the report; the paragraph only says
them in prose. An endpoint that is down costs one warning line, not the report. Only the
summary goes out (concept, counts, scores, finding titles and fixes), never images or file
paths; the API key stays in the request's header (the client's rule), never in the report.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lora_factory.config import LlmEndpointConfig
from lora_factory.llm_client import ChatClient, EndpointError, ResponseCache
from lora_factory.schemas import DoctorReport
from lora_factory.secrets import redact_text

Chat = Callable[[list[dict[str, Any]], dict[str, Any] | None], str]
MAX_CHARS = 1500  # a paragraph, not an essay: longer answers are cut at a sentence
_FINDINGS = 15  # the worst ones; the rest are counted

SYSTEM = ("You review image datasets for LoRA training. Write ONE short paragraph (3 to 6 sentences, plain "
          "text, no lists, no markdown) for the dataset's owner: what is most wrong, what to fix first, "
          "and whether the set looks ready. Use only the facts given.")


def narrative_messages(report: DoctorReport) -> list[dict[str, Any]]:
    """The request: the report's summary as text (no images, no file names)."""
    scores = ", ".join(f"{k} {s.value:.1f}/10" for k, s in report.scores.items())
    rows = [f"- {f.severity}: {f.title} (fix: {f.fix})" for f in report.findings[:_FINDINGS]]
    if len(report.findings) > _FINDINGS:
        rows.append(f"- ... and {len(report.findings) - _FINDINGS} more findings")
    c = report.counts
    lines = [f"Concept: {report.concept}", f"Trigger word: {report.trigger_word or 'none'}",
             f"Images: {c.get('images', 0)} ({c.get('decodable', 0)} decodable, {c.get('captioned', 0)} captioned), "
             f"layout {report.layout}", f"Scores: {scores}"]
    if not report.scores_meaningful:
        lines.append(f"Caution, say so: {report.note}")
    lines += ["Findings, worst first:", *(rows or ["- none"])]
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "\n".join(lines)}]


def clean(text: str) -> str:
    """One paragraph: code fences and line breaks out, cut at a sentence under ``MAX_CHARS``."""
    text = re.sub(r"```\w*", " ", text)
    text = " ".join(text.split())
    if len(text) <= MAX_CHARS:
        return text
    cut = text[:MAX_CHARS]
    end = cut.rfind(". ")
    return cut[: end + 1] if end > MAX_CHARS // 2 else cut.rstrip() + "…"


def write_narrative(report: DoctorReport, chat: Chat) -> str:
    """The paragraph for ``report`` from ``chat``; empty if the model said nothing."""
    return clean(chat(narrative_messages(report), None))


def narrate(report: DoctorReport, endpoint: LlmEndpointConfig, cache: Path | None,
            warn: Callable[[str], None], seed: int = 0) -> DoctorReport:
    """``report`` with its narrative, or unchanged after one ``warn`` line when the endpoint
    fails or answers nothing. Answers are cached by request (a re-inspect costs nothing)."""
    client = ChatClient(endpoint, ResponseCache(cache) if cache is not None else None, seed=seed)
    try:
        text = write_narrative(report, client.chat)
    except EndpointError as e:
        warn(f"no narrative: the LLM endpoint failed ({redact_text(str(e))}); the report is complete without it")
        return report
    if not text:
        warn(f"no narrative: the LLM endpoint {client.shown_url} answered with no text")
        return report
    return report.model_copy(update={"narrative": text})
