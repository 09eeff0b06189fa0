"""``lora-factory``: the command line, the top layer (cli -> flows -> tasks -> kernel).

User errors print one line (``error: ...``) and exit 2; checks that need no heavy imports run
before Prefect, torch or diffusers are loaded, so a typo costs a second, not half a minute.
"""

from .app import app, main

__all__ = ["app", "main"]
