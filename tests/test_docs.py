"""The documentation a user has: every design reference points at docs/design.md, which exists and has the sections
the code cites."""
from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
#: Where a reference to the design could be: the package, configs, tests, benchmarks, docs, README and root scripts.
SEARCHED = [*(REPO / d for d in ("mer", "conf", "tests", "benchmarks", "docs")), REPO / "README.md",
            *REPO.glob("*.py")]
TEXT_SUFFIXES = {".py", ".yaml", ".yml", ".md", ".toml", ".txt", ".csv", ".cfg"}


def searched_files() -> list[Path]:
    files = []
    for path in SEARCHED:
        candidates = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
        files += [p for p in candidates if p.suffix in TEXT_SUFFIXES and "__pycache__" not in p.parts]
    return files


def test_design_references_point_into_the_repository() -> None:
    # Built from pieces so that this file does not match its own search.
    upper = "DES" + "IGN"  # the old notes' name, as file name or as "<name> §n"
    forbidden = re.compile("|".join([re.escape(upper + ".md"), re.escape(".." + "/shared"),
                                     re.escape("/" + "shared/"), rf"\b{upper}\b"]))
    offenders = []
    for path in searched_files():
        for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            if forbidden.search(line):
                offenders.append(f"{path.relative_to(REPO)}:{number}: {line.strip()}")
    assert offenders == [], "\n".join(offenders)


def test_cited_design_sections_exist() -> None:
    design = (REPO / "docs" / "design.md").read_text(encoding="utf-8")
    sections = set(re.findall(r"^#{2,3} (\d+(?:\.\d+)?)\.? ", design, flags=re.MULTILINE))
    cited = {}
    for path in searched_files():
        if path.name == "design.md":
            continue
        for match in re.finditer(r"docs/design\.md`?\s*§(\d+(?:\.\d+)?)(?:-§(\d+(?:\.\d+)?))?",
                                 path.read_text(encoding="utf-8", errors="replace")):
            for section in filter(None, match.groups()):
                cited.setdefault(section, []).append(str(path.relative_to(REPO)))
    assert cited, "no code cites docs/design.md"
    missing = {section: where for section, where in cited.items() if section not in sections}
    assert missing == {}, f"cited sections missing from docs/design.md: {missing} (it has {sorted(sections)})"
    assert "[docs/design.md](docs/design.md)" in (REPO / "README.md").read_text(encoding="utf-8")
