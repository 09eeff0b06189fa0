"""Checks that the services a run's config names answer, before the run starts.

Why here: preflight (``lora_factory.lifecycle.check_services``) must stop a run whose Redis is
down with one line, before anything is written; the kernel imports no upper layer, so the ping
lives in the kernel, using the ``redis`` client directly.
"""

from __future__ import annotations

from .errors import ConfigError
from .secrets import redact_text, redact_url

REDIS_TIMEOUT_S = 3.0


def check_redis(url: str, timeout_s: float = REDIS_TIMEOUT_S) -> None:
    """Raise ``ConfigError`` (one line, password masked) unless the Redis at ``url`` answers PING."""
    import redis

    shown = redact_url(url)
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=timeout_s, socket_timeout=timeout_s)
    except ValueError as exc:
        raise ConfigError(f"crawl.redis_url {shown} is not a Redis URL ({redact_text(str(exc))}): "
                          "use redis://[:password@]host[:port][/db]") from None
    try:
        client.ping()
    except redis.RedisError as exc:
        raise ConfigError(
            f"crawl.redis_url {shown} does not answer ({redact_text(str(exc))}): start Redis, "
            "fix the URL, or unset crawl.redis_url to crawl in one process"
        ) from None
    finally:
        client.close()
