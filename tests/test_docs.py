"""The documentation: the site builds with --strict, the README's links lead somewhere, and every
inventory the docs show is one fabwatch loads."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from collector.inventory.load import load_inventory

ROOT = Path(__file__).parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"

LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
"""A Markdown link or image: the target is the first group."""
SNIPPET = re.compile(r"^\s*--8<--\s+\"([^\"]+)\"\s*$", re.MULTILINE)
"""A pymdownx.snippets include of a file, relative to the repository root (mkdocs.yml base_path)."""


def relative_targets(markdown: str) -> list[str]:
    """Return the link targets of `markdown` that point into the repository, without their anchors."""
    targets = []
    for target in LINK.findall(markdown):
        if re.match(r"[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
            continue  # a URL (https:, mailto:) or an anchor on the same page
        targets.append(target.split("#", 1)[0])
    return targets


def included_inventories() -> list[Path]:
    """Return the example inventories the docs include as snippets."""
    found = {ROOT / name for page in DOCS.rglob("*.md") for name in SNIPPET.findall(page.read_text(encoding="utf-8"))}
    return sorted(path for path in found if path.suffix in {".yaml", ".yml"})


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Build the site with --strict, outside the repository, as `make docs` does."""
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    built = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
                           cwd=ROOT, env=env, capture_output=True, text=True, timeout=240, check=False)
    assert built.returncode == 0, built.stderr
    return out


@pytest.mark.slow
def test_the_site_builds_strictly_with_every_page_of_the_nav(site):
    nav = yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8").replace("!!python/name:", ""))["nav"]

    def pages(entries: list) -> list[str]:
        return [p for e in entries for v in e.values() for p in (pages(v) if isinstance(v, list) else [v])]

    for page in pages(nav):
        assert (site / page).with_suffix(".html").is_file(), page
    assert len(pages(nav)) == len(list(DOCS.rglob("*.md")))  # every page is in the nav


def test_the_site_loads_nothing_from_the_network(site):
    """Operators read the docs behind firewalls: no web fonts, no script or stylesheet from a CDN."""
    external = re.compile(r"<(?:script|link)\b[^>]*\b(?:src|href)=\"(?:https?:)?//", re.IGNORECASE)
    for page in site.rglob("*.html"):
        assert not external.search(page.read_text(encoding="utf-8")), page
    architecture = (site / "architecture.html").read_text(encoding="utf-8")
    assert 'class="mermaid"' in architecture
    assert "assets/javascripts/mermaid.min.js" in architecture


def test_every_relative_link_of_the_readme_exists():
    targets = relative_targets(README.read_text(encoding="utf-8"))
    assert any(t.startswith("docs/") for t in targets)  # the README leads into the site
    missing = [t for t in targets if not (README.parent / t).exists()]
    assert missing == []


def test_the_link_check_sees_a_broken_link():
    assert relative_targets("[a](docs/x.md#y) [b](https://example.com) [c](#here) ![d](docs/img/p.png)") == [
        "docs/x.md", "docs/img/p.png"]


def test_the_readme_stays_a_front_door():
    assert len(README.read_text(encoding="utf-8").splitlines()) < 150


def test_the_docs_include_complete_inventories_from_examples():
    included = {p.relative_to(ROOT).as_posix() for p in included_inventories()}
    assert {"examples/docs/itsm-query.yaml", "examples/docs/problem-sql.yaml"} <= included


@pytest.mark.parametrize("path", included_inventories(), ids=lambda p: p.name)
def test_every_inventory_the_docs_show_loads(path: Path):
    inventory = load_inventory([path], {"CRM_DSN": "sqlite+aiosqlite:///crm.db"})
    assert inventory.processes


def test_the_deployment_pages_scrape_config_is_the_relabeling_the_failover_test_uses() -> None:
    from exporters.prometheus import replica_relabeling

    page = (DOCS / "deployment.md").read_text()
    blocks = [yaml.safe_load(block) for block in re.findall(r"```yaml\n(.*?)```", page, re.DOTALL)]
    jobs = [job for block in blocks if isinstance(block, dict) for job in block.get("scrape_configs", [])]
    assert len(jobs) == 1
    assert jobs[0]["metric_relabel_configs"] == replica_relabeling()
