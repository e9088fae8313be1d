"""Rewrite the README's claims table from the committed studies (``sparsernn.study.claims.readme_table``).

Usage: python scripts/readme_claims.py [README.md]

The table sits between the two marker comments of :data:`BEGIN` and :data:`END`; a test checks that the
README holds exactly what this writes, so run it after a study's report changes.
"""

from __future__ import annotations

import sys
from pathlib import Path

from sparsernn.study.claims import readme_table

ROOT = Path(__file__).resolve().parent.parent
STUDIES = {"AN4": ROOT / "docs/results/an4-frontier", "PTB": ROOT / "docs/results/ptb-frontier",
           "MT": ROOT / "docs/results/mt"}
BEGIN = "<!-- claims: written by scripts/readme_claims.py from the study reports; do not edit -->\n"
END = "<!-- end of claims -->\n"


def with_table(readme: str) -> str:
    """``readme`` with the text between the markers replaced by the current table."""
    if BEGIN not in readme or END not in readme:
        raise SystemExit(f"README: the markers {BEGIN.strip()} and {END.strip()} are missing")
    head, rest = readme.split(BEGIN, 1)
    return head + BEGIN + readme_table(STUDIES) + END + rest.split(END, 1)[1]


if __name__ == "__main__":
    path = Path(sys.argv[1] if len(sys.argv) > 1 else ROOT / "README.md")
    path.write_text(with_table(path.read_text()))
    print(f"claims table written to {path}")
