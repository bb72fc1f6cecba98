"""`python -m docre.cli ...`: the same as the `docre` command."""
import sys

from .main import main

sys.exit(main())
