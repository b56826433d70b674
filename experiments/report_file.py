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


def markdown_table(rows: list[dict]) -> str:
    """Rows of equal keys as a Markdown table (the keys are the header)."""
    header = list(rows[0])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        lines.append("| " + " | ".join(f"{row[k]:.4f}" if isinstance(row[k], float) else str(row[k]) for k in header) + " |")
    return "\n".join(lines)
