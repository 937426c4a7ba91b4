"""The documentation stands alone: every relative link, anchor and backticked repository path in
the repository's Markdown resolves, every ``docs/<page>.md#anchor`` cited from code or configs
names a real heading, and nothing cites a file outside the repository (a path of one machine,
the project's private notes) instead of docs/methods.md or the paper."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

LINK = re.compile(r"(?<!\!)\[(?:[^\]\[]|\[[^\]]*\])*\]\(([^()\s]+)(?:\s+\"[^\"]*\")?\)")
IMAGE = re.compile(r"!\[[^\]]*\]\(([^()\s]+)\)")
CODE = re.compile(r"(?<!`)`([^`\n]+)`(?!`)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
FENCE = re.compile(r"^\s*(```|~~~)")
# a repository path cited from a non-Markdown file: docs/<page>.md with an optional #anchor
DOC_REF = re.compile(r"\bdocs/([\w.-]+\.md)(?:#([a-z0-9_-]+))?")


def tracked_files() -> list[str]:
    """The repository's files: git's list where this is a checkout, else the files on disk
    outside virtual environments, results and caches."""
    try:
        out = subprocess.run(["git", "-C", str(ROOT), "ls-files", "--cached", "--others",
                              "--exclude-standard"], capture_output=True, text=True, check=True)
        files = [f for f in out.stdout.splitlines() if (ROOT / f).is_file()]
        if files:
            return files
    except (OSError, subprocess.CalledProcessError):
        pass
    skip = {".git", ".venv", "results", "__pycache__", ".snakemake", ".ruff_cache",
            ".pytest_cache"}
    return [str(p.relative_to(ROOT)) for p in ROOT.rglob("*")
            if p.is_file() and not skip & set(p.relative_to(ROOT).parts)]


def markdown_files(files: list[str]) -> list[str]:
    """README.md, CHANGELOG.md, docs/*.md, benchmarks/README.md, workflow/**/README.md and any
    other tracked Markdown file outside tests."""
    return sorted(f for f in files if f.endswith(".md") and not f.startswith("tests/"))


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: links and markup dropped, lower case, punctuation other
    than '-' and '_' removed, spaces to '-'."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)
    text = re.sub(r"<[^>]+>", "", text).strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def prose_lines(text: str):
    """(line number, line) of the text outside fenced code blocks."""
    fenced = False
    for no, line in enumerate(text.splitlines(), 1):
        if FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            yield no, line


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for _, line in prose_lines(path.read_text(encoding="utf-8")):
        m = HEADING.match(line)
        if not m:
            continue
        base = slug(m.group(2))
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def looks_like_repo_path(token: str, top: set[str]) -> str | None:
    """The repository path a backticked token names, or None when it names something else (a
    command, a module, an output under results/, a placeholder)."""
    token = token.split("::", 1)[0].strip()
    if not token or any(c in token for c in " <>{}*$|=,;()[]'\"") or "://" in token:
        return None
    if token.startswith(("./", "/", "~", "-")) or token.endswith("."):
        return None
    first = token.split("/", 1)[0]
    if "/" not in token:
        # a bare name counts only when it is a file at the top of the repository
        return token if first in top and (ROOT / token).is_file() else None
    return token if first in top else None


def check_target(root: Path, src: Path, target: str, cache: dict[Path, set[str]]) -> str | None:
    """Why ``target`` (a link from ``src``, a file of the tree ``root``) does not resolve, or
    None."""
    path_part, _, anchor = target.partition("#")
    dest = (src.parent / path_part).resolve() if path_part else src
    try:
        dest.relative_to(root.resolve())
    except ValueError:
        return "points outside the repository"
    if not dest.exists():
        return "no such file"
    if anchor and dest.suffix == ".md":
        if dest not in cache:
            cache[dest] = anchors(dest)
        if anchor not in cache[dest]:
            return f"no heading with anchor #{anchor} in {dest.relative_to(root.resolve())}"
    return None


def broken_references(root: Path = ROOT, files: list[str] | None = None) -> list[str]:
    """Every broken link, anchor or backticked path in the Markdown files, and every broken
    ``docs/<page>.md#anchor`` in the other text files, one line each: file:line: what."""
    files = tracked_files() if files is None else files
    top = {f.split("/", 1)[0] for f in files}
    cache: dict[Path, set[str]] = {}
    problems = []
    for name in markdown_files(files):
        src = (root / name).resolve()
        for no, line in prose_lines(src.read_text(encoding="utf-8")):
            for m in list(LINK.finditer(line)) + list(IMAGE.finditer(line)):
                target = m.group(1)
                if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
                    continue
                why = check_target(root, src, target, cache)
                if why:
                    problems.append(f"{name}:{no}: link ({target}): {why}")
            for m in CODE.finditer(LINK.sub("", line)):
                path = looks_like_repo_path(m.group(1), top)
                if path and not (root / path).exists():
                    problems.append(f"{name}:{no}: `{m.group(1)}`: no such path in the repository")
    for name in files:
        if name.endswith(".md") or name == "tests/test_docs.py":
            continue
        try:
            text = (root / name).read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        for no, line in enumerate(text.splitlines(), 1):
            for m in DOC_REF.finditer(line):
                page, anchor = m.groups()
                ref = f"{page}#{anchor}" if anchor else page
                why = check_target(root, root / "docs" / "x", ref, cache)
                if why:
                    problems.append(f"{name}:{no}: docs/{m.group(1)}"
                                    f"{'#' + anchor if anchor else ''}: {why}")
    return problems


def test_every_link_anchor_and_path_in_the_docs_resolves():
    problems = broken_references()
    assert not problems, "broken references in the documentation:\n" + "\n".join(problems)


def test_the_docs_the_readme_lists_exist_and_link_back():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    listed = set(re.findall(r"\]\((docs/[\w.-]+\.md)\)", readme))
    on_disk = {f"docs/{p.name}" for p in (ROOT / "docs").glob("*.md")}
    assert on_disk <= listed, f"pages the README does not link: {sorted(on_disk - listed)}"
    assert "docs/classifiers.md#defaults-and-their-sources" in readme  # the "our choice" table


def test_the_checker_finds_what_is_broken(tmp_path):
    """Known answer: a tree with one good and four broken references of each kind."""
    (tmp_path / "docs").mkdir()
    (tmp_path / "ltpipe").mkdir()
    (tmp_path / "ltpipe" / "a.py").write_text(
        "# see docs/page.md#real-heading and docs/page.md#gone and docs/missing.md\n")
    (tmp_path / "docs" / "page.md").write_text(
        "# Page\n\n## Real heading\n\n## A `code` heading: yes\n\n"
        "[ok](#real-heading) [ok2](#a-code-heading-yes) [ok3](../README.md#top)\n"
        "[bad anchor](#nope) [bad file](other.md) `ltpipe/a.py` `ltpipe/b.py`\n"
        "```\n[inside a fence](nowhere.md) `ltpipe/c.py`\n```\n"
        "[web](https://example.org/x.md) `results/x/y.npz` `python -m ltpipe`\n")
    (tmp_path / "README.md").write_text("# Top\n\n[docs](docs/page.md#real-heading)\n")
    files = ["README.md", "docs/page.md", "ltpipe/a.py"]
    got = broken_references(tmp_path, files)
    assert got == [
        "docs/page.md:8: link (#nope): no heading with anchor #nope in docs/page.md",
        "docs/page.md:8: link (other.md): no such file",
        "docs/page.md:8: `ltpipe/b.py`: no such path in the repository",
        "ltpipe/a.py:1: docs/page.md#gone: no heading with anchor #gone in docs/page.md",
        "ltpipe/a.py:1: docs/missing.md: no such file",
    ], got


# Strings that cite what a user of the repository does not have: the project's private notes
# (a section sign after their file name), its folder of paper texts, and the folders of one machine.
FORBIDDEN = ["methods.md " + "§", "papers" + "/", "/work" + "/", "../" + "shared", "/root" + "/",
             "/home" + "/"]


@pytest.mark.parametrize("needle", FORBIDDEN)
def test_nothing_cites_files_outside_the_repository(needle):
    hits = []
    for name in tracked_files():
        if name == "tests/test_docs.py":
            continue
        try:
            text = (ROOT / name).read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        hits += [f"{name}:{no}" for no, line in enumerate(text.splitlines(), 1) if needle in line]
    assert not hits, f"{needle!r} cited in: {hits}"
