"""LoRATuner: the whole training config from the dataset, the model family and the GPU, with
the reason for every value, learning from every past run the factory tracked.

Modules: ``families`` (model families as table rows), ``rules`` (the community defaults with
their sources, and the statistics rules), ``memory`` (peak-memory estimate and budget fit),
``history`` (similar past runs in MLflow), ``inputs`` (the statistics files), ``recommend``
(putting it together), ``rationale`` (``rationale.md``), ``trace`` (measuring a family's
activations on the meta device, a maintainer's tool).
"""

from .families import FAMILIES, FamilyRow, family_for, family_row
from .history import PastRun, load_history
from .inputs import StatsError, TuneStats, read_stats_file, stats_from
from .memory import MemoryEstimate, estimate, fit_to_budget
from .rationale import headline, markdown
from .recommend import Choice, Recommendation, TuneRequest, recommend, request_for

__all__ = [
    "FAMILIES", "Choice", "FamilyRow", "MemoryEstimate", "PastRun", "Recommendation", "StatsError",
    "TuneRequest", "TuneStats", "estimate", "family_for", "family_row", "fit_to_budget", "headline",
    "load_history", "markdown", "read_stats_file", "recommend", "request_for", "stats_from",
]
