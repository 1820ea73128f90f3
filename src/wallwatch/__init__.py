"""wallwatch: detect, measure and prove DNS tampering by national firewalls."""

__version__ = "0.1.0"

__all__ = ["__version__"]
