"""Where every experiment's results go: a Markdown file under docs/, echoed to the terminal."""

from __future__ import annotations

from pathlib import Path


def write_report(path: str | Path, lines: list[str]) -> Path:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    text = "\n".join(lines) + "\n"
    out.write_text(text)
    print(text)
    return out
