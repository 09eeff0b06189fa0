"""Small pieces of the stages' self-contained HTML reports (curate, label): inline thumbnails.

Not a stage: a helper the stage reports share, like ``_text``. The thumbnail itself lives in
``datatools.thumbs`` so the dataset doctor (below the stages) draws the same ones.
"""

from __future__ import annotations

from datatools.thumbs import thumbnail_uri

__all__ = ["thumbnail_uri"]
