"""Great Expectations suites (JSON files in ``suites/``) and the adapter that runs them."""

from expectations.adapter import load_suite, validate, validate_window

__all__ = ["load_suite", "validate", "validate_window"]
