"""`python -m cutover.cli ...`: the same as the `cutover` console script."""

from cutover.cli import entry

entry()
