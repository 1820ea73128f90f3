"""``python -m wallwatch``."""

from wallwatch.cli import main

main()
