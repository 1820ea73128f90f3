"""Where data from outside the package is looked for.

Why one function: the analysis (larger forged-address lists) and the lab (blocklists,
pools) both read third-party files that are not redistributed with wallwatch; each
place that reads them names the file, and the verdicts record a hash of what was
actually read (:func:`wallwatch.analysis.pools.load`), so a verdict never depends on
an unnamed file beside the checkout.
"""

from __future__ import annotations

import os
from pathlib import Path


def shared_data() -> Path:
    """Third-party data: ``$WALLWATCH_SHARED_DATA``, else ``../shared/data`` beside the checkout."""
    env = os.environ.get("WALLWATCH_SHARED_DATA")
    return Path(env) if env else Path(__file__).resolve().parents[2].parent / "shared" / "data"
