"""Writing measured tables into Markdown files (bench/RESULTS.md): one ``## `` section replaced in place."""

from __future__ import annotations


def replace_section(text: str, heading: str, body: str) -> str:
    """``text`` with the ``## `` section that starts at the line ``heading`` replaced by ``body``
    (which starts with that heading), up to the next ``## `` heading; appended if there is none."""
    lines = text.splitlines()
    starts = [i for i, line in enumerate(lines) if line.strip() == heading]
    if not starts:
        return text.rstrip("\n") + "\n\n" + body.rstrip("\n") + "\n"
    start = starts[0]
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    tail = lines[end:]
    return "\n".join([*lines[:start], *body.rstrip("\n").splitlines(), *(["", *tail] if tail else [])]) + "\n"
