"""What changed since an earlier study: each category test of its `study_tests.csv` set beside the same test now.

A test is one comparison (row a vs row b) on one category; "significant" is the category-level paired bootstrap after
Holm (the report's ▲/▼ marker). Each earlier test gets one status:

- **held**: significant then and now, the same direction; or not significant either time;
- **flipped**: significant then and now, in opposite directions;
- **newly significant**: not significant then, significant now;
- **no longer significant**: significant then, not now;
- **not run now**: the earlier study tested it, this one (so far) has not.

Tests of this study that the earlier one did not have are listed as new. The earlier file may leave its interval empty
(e.g. a table transcribed from a report that printed only the marker); the status needs only the difference and the
marker.
"""

import csv
import math
from dataclasses import dataclass
from pathlib import Path

from .plan import StudyError

EARLIER_TESTS_FILE = "previous_tests.csv"  # in the study folder: a copy of the earlier study's study_tests.csv
STATUSES = ("held", "flipped", "newly significant", "no longer significant", "not run now")


@dataclass(frozen=True)
class EarlierTest:
    """One row of an earlier study's `study_tests.csv`: what the status needs."""

    a: str
    b: str
    question: str
    category: str
    difference: float
    low: float | None
    high: float | None
    marker: str  # ▲, ▼ or "" (no significant difference)

    @property
    def key(self) -> tuple[str, str, str]:
        return self.a, self.b, self.category

    def cell(self) -> str:
        interval = f" [{self.low:+.4f}, {self.high:+.4f}]" if self.low is not None and self.high is not None else ""
        return f"{self.difference:+.4f}{interval} {self.marker}".strip()


def read_earlier_tests(path) -> list[EarlierTest]:
    """The tests of an earlier study's `study_tests.csv` (columns a, b, question, category, difference, 95% low,
    95% high, marker; others ignored)."""
    path = Path(path)
    if not path.is_file():
        raise StudyError(f"--previous-tests {path}: no such file; give the study_tests.csv of an earlier study.")
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:  # -sig: a file saved by a spreadsheet
            rows = list(csv.DictReader(handle))
    except (UnicodeDecodeError, csv.Error) as error:
        raise StudyError(f"--previous-tests {path}: not a readable CSV file ({error}).") from None
    needed = {"a", "b", "question", "category", "difference", "marker"}
    if not rows or needed - set(rows[0]):
        missing = ", ".join(sorted(needed - set(rows[0]))) if rows else "every row"
        raise StudyError(f"--previous-tests {path}: not a study_tests.csv (missing: {missing}).")
    tests = []
    for number, row in enumerate(rows, start=2):  # a row's line, counting the header as line 1
        if empty := [name for name in sorted(needed - {"marker"}) if not (row.get(name) or "").strip()]:
            raise StudyError(
                f"--previous-tests {path}, line {number}: no {', '.join(empty)} (a cut or hand-edited file?); every "
                "test needs a, b, question, category and difference."
            )
        marker = (row["marker"] or "").strip()
        if marker not in ("▲", "▼", ""):
            raise StudyError(f"--previous-tests {path}, line {number}: marker {marker!r}; allowed: ▲, ▼ or empty.")
        try:
            numbers = [_number(row.get(name)) for name in ("difference", "95% low", "95% high")]
        except ValueError as error:
            raise StudyError(f"--previous-tests {path}, line {number}: {error}.") from None
        tests.append(EarlierTest(row["a"], row["b"], row["question"], row["category"], *numbers, marker))
    return tests


def keep_earlier_tests(path, output) -> Path:
    """Check `path` and copy it into the study folder, where every later report of the study reads it."""
    from ..files import write_text

    read_earlier_tests(path)
    kept = Path(output) / EARLIER_TESTS_FILE
    write_text(kept, Path(path).read_text(encoding="utf-8"))
    return kept


def _number(text: str | None) -> float | None:
    """A finite number, or None for an empty cell; raises ValueError naming the text otherwise."""
    if text is None or not text.strip():
        return None
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text!r} is not a finite number")
    return value


def status(earlier: EarlierTest, now) -> str:
    """The status of one earlier test given the same test now (a `CategoryComparison`, or None)."""
    if now is None:
        return "not run now"
    if earlier.marker and now.marker:
        return "held" if earlier.marker == now.marker else "flipped"
    if now.marker:
        return "newly significant"
    if earlier.marker:
        return "no longer significant"
    return "held"


def changes_section(earlier_tests: list[EarlierTest], tests: list, source: str) -> list[str]:
    """Markdown: every earlier test with its cell then and now and its status; then the counts per status."""
    from ..stats import markdown_table

    now = {(test.a, test.b, test.category): test for test in tests}
    rows, counts = [], dict.fromkeys(STATUSES, 0)
    for earlier in earlier_tests:
        current = now.get(earlier.key)
        found = status(earlier, current)
        counts[found] += 1
        then = earlier.cell() or "no significant difference"
        rows.append(
            [f"{earlier.a} vs {earlier.b}", earlier.category, then, current.cell() if current else None, found]
        )
    new = [test for key, test in now.items() if key not in {earlier.key for earlier in earlier_tests}]
    lines = [
        "## What changed",
        "",
        f"Each category test of the earlier study (`{source}`) beside the same test now (difference a − b, 95% "
        "interval, ▲/▼ significant after Holm): held, flipped, newly significant, no longer significant, or not run "
        "now.",
        "",
        markdown_table(["a vs b", "category", "earlier", "now", "status"], rows),
        "",
        "Counts: " + ", ".join(f"{name} {count}" for name, count in counts.items() if count) + ".",
        "",
    ]
    if new:
        lines += [
            "Tested now, not in the earlier study: "
            + "; ".join(f"{test.a} vs {test.b} {test.category} {test.cell()}" for test in new)
            + ".",
            "",
        ]
    return lines
