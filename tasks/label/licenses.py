"""The licence policy, applied before anything is labelled: only allowed licences reach the dataset.

Why families: the crawl records versioned ids ("CC-BY-4.0", "CC-BY-SA-3.0", "CC0-1.0",
"public-domain", "all-rights-reserved", "unknown"; see ``spiders.sources.licences``). A user
allows "CC-BY" meaning every version of it, so an allow-list entry without a version matches the
family and one with a version matches exactly. ``unknown`` is its own switch, because whether an
unlabelled page may be trained on is a policy decision, not a licence.

Every dropped image gets the reason ``license`` (the manifest's spelling, ``DROP_REASONS``) and the
licence it had, so "why is this image not in my dataset?" has an answer.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from lora_factory.config import LabelConfig
from lora_factory.manifest import decision

REASON = "license"
UNKNOWN = "unknown"
_VERSIONED = re.compile(r"^(?P<family>.+?)-(?P<version>\d+(?:\.\d+)*)$")


def license_family(license_id: str) -> str:
    """``CC-BY-SA-4.0`` -> ``CC-BY-SA``, ``CC0-1.0`` -> ``CC0``; unversioned ids are their own family."""
    m = _VERSIONED.match(license_id.strip())
    return m["family"] if m else license_id.strip()


def is_unknown(license_id: str | None) -> bool:
    return not (license_id or "").strip() or license_id.strip().lower() == UNKNOWN


def license_allowed(license_id: str | None, cfg: LabelConfig) -> bool:
    """Whether ``license_id`` is on the allow-list (families or exact ids, case-insensitive)."""
    if is_unknown(license_id):
        return cfg.allow_unknown_license
    lid = license_id.strip().lower()  # type: ignore[union-attr]
    family = license_family(lid)
    allowed = {a.strip().lower() for a in cfg.allowed_licenses}
    return lid in allowed or family in allowed


@dataclass
class PolicyResult:
    kept: list[dict[str, Any]]
    decisions: list[dict[str, Any]]  # one drop per refused item (reason "license")
    kept_licenses: Counter[str] = field(default_factory=Counter)
    dropped_licenses: Counter[str] = field(default_factory=Counter)


def apply_license_policy(items: list[dict[str, Any]], stage: str, cfg: LabelConfig) -> PolicyResult:
    """Split ``items`` into the allowed ones and a ``license`` drop for each of the others."""
    result = PolicyResult([], [])
    policy = ", ".join(cfg.allowed_licenses) + (", unknown" if cfg.allow_unknown_license else "")
    for item in items:
        lid = (item.get("license") or UNKNOWN).strip() or UNKNOWN
        if license_allowed(lid, cfg):
            result.kept.append(item)
            result.kept_licenses[lid] += 1
            continue
        result.dropped_licenses[lid] += 1
        result.decisions.append(decision(
            item["item_id"], stage, False, REASON,
            detail=f"license {lid} is not allowed (label.allowed_licenses: {policy or 'none'})"))
    return result
