"""The README's option table is generated from the config dataclass: they must not drift."""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_readme_option_table_matches_the_dataclass():
    table = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "options_table.py")],
                           capture_output=True, text=True, check=True).stdout.strip()
    readme = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    assert table in readme
    assert table.count("\n") >= 11  # header, rule and ten options
