"""docs/performance.md: every benchmark rewrites only its own section, between its markers."""

from __future__ import annotations

from pathlib import Path

DOC = Path(__file__).resolve().parent.parent / "docs" / "performance.md"
INTRO = """# Performance

Measured by the benchmarks in `bench/` (they are not tests). The machines this runs on are shared and
noisy, so no figure here is a promise: every target is a ratio against a baseline measured side by side
in the same run, each figure the best of interleaved repetitions, and the machine is named with it.

Reproduce: `make bench` (installs the mail stack's packages, then runs everything), or one benchmark:
`python -m bench.run plan` / `python -m bench.run send`. Each rewrites only its own section below.
"""


def write_section(name: str, text: str, doc: Path = DOC) -> None:
    """Replace what lies between `name`'s markers, or append the section; the file is read just before it
    is written, so benchmarks run one after another keep each other's sections."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    current = doc.read_text() if doc.exists() else INTRO
    block = f"{start}\n{text.strip()}\n{end}"
    if start in current and end in current:
        current = current[:current.index(start)] + block + current[current.index(end) + len(end):]
    else:
        current = current.rstrip("\n") + "\n\n" + block + "\n"
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text(current)
