"""What makes a report page render on its own, inside MLflow's artifact viewer: every image
inlined (a relative or remote `src` shows nothing there), and no heading left empty."""

from __future__ import annotations

from html.parser import HTMLParser


class _Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.problems: list[str] = []
        self.heading: str | None = None  # the last h1-h3 whose section is still empty
        self.in_heading = False
        self.text = ""
        self.level = 0

    def handle_starttag(self, tag: str, attrs: list) -> None:
        if tag in ("h1", "h2", "h3"):
            if self.heading is not None and int(tag[1]) > self.level:
                self.heading = None  # a section whose content is its subsections
            self._close()
            self.in_heading, self.text, self.level = True, "", int(tag[1])
        elif tag == "img":
            src = dict(attrs).get("src") or ""
            if not src.startswith("data:image/"):
                self.problems.append(f"image not inlined: src='{src[:60]}'")
            self.heading = None
        elif tag in ("table", "ul", "ol", "p", "div", "pre") and not self.in_heading:
            self.heading = None

    def handle_endtag(self, tag: str) -> None:
        if tag in ("h1", "h2", "h3") and self.in_heading:
            self.in_heading, self.heading = False, self.text.strip() or "(untitled)"

    def handle_data(self, data: str) -> None:
        if self.in_heading:
            self.text += data
        elif data.strip():
            self.heading = None

    def _close(self) -> None:
        if self.heading is not None:
            self.problems.append(f"empty section: {self.heading}")
            self.heading = None

    def close(self) -> None:
        super().close()
        self._close()


def self_contained_problems(page: str) -> list[str]:
    parser = _Page()
    parser.feed(page)
    parser.close()
    return parser.problems
