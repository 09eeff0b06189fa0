"""Opt-outs addressed to the crawler: robots directives in X-Robots-Tag headers and meta robots.

Why a module of its own: the topic spider (pages and images through Scrapy) and the url-list
downloader (``spiders.urlfetch``, images only) must read ``noai``/``noimageai`` the same way.
"""

from __future__ import annotations

import re

_DIRECTIVES_WITH_COLON = {"max-snippet", "max-image-preview", "max-video-preview", "unavailable_after"}
_UA_PREFIX = re.compile(r"^\s*([A-Za-z0-9_.*-]+)\s*:\s*(.*)$")
AI_OPT_OUTS = frozenset({"noai", "noimageai"})


def bot_token(user_agent: str) -> str:
    """The product token robots directives may address: "LoRAFactoryBot/0.1 (...)" -> lorafactorybot."""
    return user_agent.split("/", 1)[0].split()[0].lower() if user_agent.strip() else ""


def robots_directives(values: list[str], bot: str) -> set[str]:
    """Directives from X-Robots-Tag values or meta robots contents that apply to ``bot``.

    ``X-Robots-Tag: otherbot: noai`` addresses another crawler and is ignored; ``noai``,
    ``*: noai`` and ``lorafactorybot: noai`` apply.
    """
    out: set[str] = set()
    for value in values:
        m = _UA_PREFIX.match(value)
        if m and m[1].lower() not in _DIRECTIVES_WITH_COLON:
            if m[1].lower() not in ("*", bot):
                continue
            value = m[2]
        out.update(t.strip().lower() for t in value.split(",") if t.strip())
    return out


def image_opt_out(x_robots_tags: list[str], bot: str) -> str | None:
    """The rejection detail when an image's X-Robots-Tag opts it out of AI use, else None."""
    found = robots_directives(x_robots_tags, bot) & AI_OPT_OUTS
    return f"X-Robots-Tag {', '.join(sorted(found))} on the image" if found else None
