"""``python -m macro.cli``: the same command line as ``macro``."""

from macro.cli import main

main()
