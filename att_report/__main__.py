"""`python -m att_report` runs the CLI."""

import sys

from att_report.cli import main

sys.exit(main())
