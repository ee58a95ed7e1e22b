"""The README stands on its own in a clone: every link it makes into the tree leads somewhere."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# The booted Debian 12 gets the tests alone (/srv/tests), without the tree they document.
pytestmark = pytest.mark.skipif(not (REPO / "README.md").exists(), reason="no README.md beside the tests")


def test_every_relative_link_of_the_readme_resolves_in_the_repository() -> None:
    text = (REPO / "README.md").read_text()
    targets = [target.split("#")[0] for target in re.findall(r"\]\(([^)\s]+)\)", text)
               if not re.match(r"[a-z]+:", target) and not target.startswith("#")]
    assert targets, "the README links nothing: the pattern is wrong"
    missing = [target for target in targets if not (REPO / target).resolve().is_relative_to(REPO)
               or not (REPO / target).exists()]
    assert missing == [], f"links that lead outside the repository or nowhere: {missing}"
