"""Child program for ``test_crawl_guard``: ``python -m tests.crawl_rebind_child --spec FILE``
runs one crawl (``spiders.run``) in a process whose DNS answers for ``REBIND_HOST`` change after
the first lookup, as a rebinding attacker's name server would: the first answer is ``FIRST``,
every later one ``LATER``. Only that name is answered here; every other lookup is the system's.
"""

from __future__ import annotations

import socket
import sys
from typing import Any

REBIND_HOST = "rebind.test"
FIRST, LATER = "127.0.0.1", "127.0.0.2"


def install_rebinding_dns() -> list[str]:
    """Patch this process's resolver functions; returns the answers given, in order."""
    given: list[str] = []
    system_getaddrinfo, system_gethostbyname = socket.getaddrinfo, socket.gethostbyname

    def answer() -> str:
        given.append(LATER if given else FIRST)
        return given[-1]

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        return system_getaddrinfo(answer() if host == REBIND_HOST else host, *args, **kwargs)

    def gethostbyname(host: str) -> str:
        return answer() if host == REBIND_HOST else system_gethostbyname(host)

    socket.getaddrinfo = getaddrinfo  # type: ignore[assignment]
    socket.gethostbyname = gethostbyname
    return given


def main(argv: list[str] | None = None) -> int:
    given = install_rebinding_dns()
    from spiders.run import main as crawl_main

    code = crawl_main(argv)
    print(f"dns answers for {REBIND_HOST}: {given}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
