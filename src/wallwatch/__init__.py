"""wallwatch: detect, measure and prove DNS tampering by national firewalls.

The public API is small on purpose (httpx's ``__init__`` is the model) and pinned by
``tests/test_api.py``; ``docs/python-api.md`` shows it in use::

    import wallwatch as ww
    ms = ww.probe(["www.google.com"], ["8.8.8.8", "dark:203.0.113.7"], control="tcp:9.9.9.9")
    result = ww.analyze(ms)
    for row in result.attribution_rows():
        print(row.hostname, row.attribution, row.reasons)

The lower-level halves stay public in their modules (dnspython's habit):
``wallwatch.probe.engine.Prober``, ``wallwatch.store``, ``wallwatch.analysis.rules``...
"""

import sys
import types

from wallwatch._api import (
    Analysis,
    NameAttribution,
    ReplyVerdict,
    analyze,
    detect,
    explain,
    locate,
    netinfo,
    probe,
    read,
)
from wallwatch.analysis.netinfo import AddressInfo
from wallwatch.records import Answer, InputError, Measurement, Response, Stray
from wallwatch.vocab import Attribution, Engine, Evidence, Failure, Outcome, TargetKind

__version__ = "0.1.0"


class _Package(types.ModuleType):
    """``wallwatch.probe``, ``.explain`` and ``.locate`` are both API functions and
    modules. The API imports those modules only when first used (``import wallwatch``
    runs before every command), and the import system then binds the submodule on the
    package; the name must stay the function, as it was when the modules were imported
    up front. The modules stay reachable by their full names."""

    def __setattr__(self, name: str, value: object) -> None:
        if name in ("probe", "explain", "locate") and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package

__all__ = [
    "AddressInfo",
    "Analysis",
    "Answer",
    "Attribution",
    "Engine",
    "Evidence",
    "Failure",
    "InputError",
    "Measurement",
    "NameAttribution",
    "Outcome",
    "ReplyVerdict",
    "Response",
    "Stray",
    "TargetKind",
    "__version__",
    "analyze",
    "detect",
    "explain",
    "locate",
    "netinfo",
    "probe",
    "read",
]
