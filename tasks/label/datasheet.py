"""``label/datasheet.md``: where the training images came from and on what terms.

Why: a LoRA is shared with a model card, and the card must say what the data was, which
licences it carried, which opt-outs were honoured and whom to credit (CC BY and CC BY-SA require
attribution). This page is that part of the card, written from the run's own records.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Any
from urllib.parse import urlsplit

from lora_factory.config import LabelConfig

from .licenses import PolicyResult


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    cell = [str(h) for h in header]
    lines = ["| " + " | ".join(cell) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows]
    return lines


def _sources(labels: list[dict[str, Any]]) -> list[str]:
    by_site: dict[str, set[str]] = defaultdict(set)
    images: Counter[str] = Counter()
    for lab in labels:
        site = urlsplit(lab.get("page_url") or "").netloc or "(unknown)"
        by_site[site].add(lab.get("page_url") or "")
        images[site] += 1
    return _table(["site", "pages", "images"], [[s, len(by_site[s]), n] for s, n in images.most_common()])


def _licences(policy: PolicyResult, cfg: LabelConfig) -> list[str]:
    allowed = ", ".join(cfg.allowed_licenses) or "none"
    unknown = "allowed" if cfg.allow_unknown_license else "not allowed"
    ids = sorted(set(policy.kept_licenses) | set(policy.dropped_licenses))
    rows = [[lid, policy.kept_licenses.get(lid, 0), policy.dropped_licenses.get(lid, 0)] for lid in ids]
    return [f"Policy (applied before labelling): allowed {allowed}; `unknown` {unknown}.", "",
            *_table(["licence", "kept", "dropped (reason license)"], rows)]


def _opt_outs(crawl_stats: dict[str, Any], honour_noai: bool, obey_robots: bool) -> list[str]:
    rejections = crawl_stats.get("rejections") or {}
    return [
        f"- robots.txt {'obeyed' if obey_robots else 'NOT obeyed'}: "
        f"{crawl_stats.get('robots_forbidden', 0)} request(s) refused by it.",
        f"- `noai` / `noimageai` {'honoured' if honour_noai else 'NOT honoured'}: "
        f"{crawl_stats.get('pages_noai', 0)} page(s) opted out (their images were not downloaded), "
        f"{rejections.get('noai', 0)} image(s) refused.",
    ]


def _authors(labels: list[dict[str, Any]]) -> list[str]:
    credits: dict[tuple[str, str], list[str]] = defaultdict(list)
    for lab in labels:
        credits[(lab.get("author") or "(not stated)", lab.get("license") or "unknown")].append(lab.get("page_url") or "")
    rows = [[author, lid, len(pages), ", ".join(sorted(set(pages))[:5]) + (" ..." if len(set(pages)) > 5 else "")]
            for (author, lid), pages in sorted(credits.items())]
    return _table(["author", "licence", "images", "pages"], rows)


def render_datasheet(title: str, labels: list[dict[str, Any]], policy: PolicyResult, cfg: LabelConfig,
                     crawl_stats: dict[str, Any], *, honour_noai: bool, obey_robots: bool,
                     summary: str | None) -> str:
    """The datasheet as Markdown (the model card embeds it)."""
    sources = Counter(lab["caption_source"] for lab in labels)
    lines = [
        f"# Datasheet: {title}", "",
        f"{len(labels)} image(s) in the training set" + (f": {summary}" if summary else "."), "",
        "## Sources", "", *_sources(labels), "",
        "## Licences", "", *_licences(policy, cfg), "",
        "## Opt-outs honoured", "", *_opt_outs(crawl_stats, honour_noai, obey_robots), "",
        "## Authors to attribute", "",
        "CC BY and CC BY-SA require credit to the author, a link to the licence and the source.", "",
        *_authors(labels), "",
        "## Captions", "",
        f"Trigger word `{cfg.trigger_word}`; style {cfg.caption_style}; sources: "
        + (", ".join(f"{k} {v}" for k, v in sources.most_common()) or "none") + ".", "",
    ]
    return "\n".join(lines)
