"""The opening-format classifier the evaluation stage (per-item scores) and the report share."""

import pytest

from sdft.base.openings import opening


@pytest.mark.parametrize("text, kind", [
    ("1. Gather the materials.\n2. ...", "numbered list"),
    ("  1) First", "numbered list"),
    ("Step 1: read the question", "numbered list"),
    ("- a point\n- another", "bulleted list"),
    ("```python\nprint(1)\n```", "code block"),
    ("## Plan\nFirst ...", "heading"),
    ("**Answer:**\n42", "heading"),
    ("I'm sorry, but I can't help with that.", "prose"),
    ("10. is not how a list starts", "prose"),
    ("1.5 kg of flour", "prose"),
    ("", "prose"),
    (None, "prose"),
])
def test_an_answer_opening_is_classified(text, kind):
    assert opening(text) == kind
