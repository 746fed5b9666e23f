"""Render the executed notebooks into a static course site with MkDocs (make site).

python tools/build_site.py [--notebooks build/course] [--out build/site]

The pages are assembled in build/site-src/: the README as the home page (its links to notebooks
rewritten to the rendered pages), the instructor's guide (docs/workshop.md), the lessons in order,
the exercises and solutions, and local copies of MathJax and the Colab badge, so the site works
offline. MkDocs (Material theme, mkdocs-jupyter) renders it.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SECTIONS = {"notebooks": "Lessons", "exercises": "Exercises", "solutions": "Solutions"}
MATHJAX_URL = (
    "../assets/mathjax/MathJax.js?config=TeX-AMS-MML_HTMLorMML-full,course"  # one folder deep
)
# The packaged MathJax 2.7 ships only the STIX-Web fonts: say so, or it asks for missing TeX fonts.
MATHJAX_CONFIG = """MathJax.Hub.Config({
  tex2jax: {inlineMath: [["$", "$"], ["\\\\(", "\\\\)"]], processEscapes: true},
  "HTML-CSS": {availableFonts: ["STIX-Web"], preferredFont: "STIX-Web", webFont: "STIX-Web",
               imageFont: null}
});
MathJax.Ajax.loadComplete("[MathJax]/config/course.js");
"""

# Code lines run up to 100 characters (the course's line length). Material's default column is
# narrower than that next to the navigation: widen the page and set code in 12 px, so that
# a code cell does not scroll sideways on a laptop screen (tests/test_site.py checks at 1440 px).
COURSE_CSS = """.md-grid { max-width: 90rem; }
.jupyter-wrapper .jp-InputArea pre { font-size: 12px; }
"""
# The notebooks' "Open in Colab" badge image lives on colab.research.google.com; the site shows a
# local copy, so a page opened offline has no failed request (the link still goes to Colab).
COLAB_BADGE = "https://colab.research.google.com/assets/colab-badge.svg"
LOCAL_BADGE = "../assets/colab-badge.svg"  # pages sit one folder deep
BADGE_SVG = """<svg xmlns="http://www.w3.org/2000/svg" width="117" height="20" role="img"
 aria-label="Open in Colab"><rect width="117" height="20" rx="3" fill="#444"/>
<rect x="24" width="93" height="20" rx="3" fill="#e8710a"/><rect x="24" width="6" height="20"
 fill="#e8710a"/><circle cx="12" cy="10" r="5" fill="none" stroke="#f9ab00" stroke-width="2.5"/>
<text x="70" y="14" fill="#fff" font-family="Verdana,sans-serif" font-size="11"
 text-anchor="middle">Open in Colab</text></svg>
"""


def assemble(notebook_dir: Path, source: Path) -> dict:
    """Copy pages into `source`; return the navigation, lessons first, in lesson order."""
    if source.exists():
        shutil.rmtree(source)
    nav = [{"Home": "index.md"}]
    for folder, title in SECTIONS.items():
        pages = []
        origin = notebook_dir if folder == "notebooks" else ROOT / folder
        for path in sorted(origin.glob("[0-9][0-9]_*.ipynb")):
            (source / folder).mkdir(parents=True, exist_ok=True)
            _copy_for_site(path, source / folder / path.name)
            pages.append({_title(path): f"{folder}/{path.name}"})
        nav.append({title: pages})
    readme = (ROOT / "README.md").read_text()
    # notebooks/NN_x.ipynb links stay valid: the page sits at the same relative path
    readme = re.sub(r"\]\((?!https?:)([^)]+\.md)\)", lambda m: f"]({_md_link(m[1])})", readme)
    (source / "index.md").write_text(readme)
    _copy_mathjax(source / "assets" / "mathjax")
    (source / "assets" / "course.css").write_text(COURSE_CSS)
    (source / "assets" / "colab-badge.svg").write_text(BADGE_SVG)
    guide = ROOT / "docs" / "workshop.md"  # the instructor's guide, a page of its own
    (source / "workshop.md").write_text(guide.read_text().replace("](../", "]("))  # one level up
    nav.insert(1, {"Instructor's guide": "workshop.md"})
    return nav


def _copy_for_site(path: Path, target: Path) -> None:
    """The notebook without ipywidgets state: progress bars show as text, and the page does not
    try to fetch the widget manager from a CDN (the site must work offline). Cell tags are for
    nbval, not for readers: without them the page shows no tag chips. The Colab badge shows the
    site's own copy of its image."""
    notebook = json.loads(path.read_text())
    notebook["metadata"].pop("widgets", None)
    for cell in notebook["cells"]:
        cell["metadata"].pop("tags", None)
        if cell["cell_type"] == "markdown":
            cell["source"] = "".join(cell["source"]).replace(COLAB_BADGE, LOCAL_BADGE)
        for output in cell.get("outputs", []):
            output.get("data", {}).pop("application/vnd.jupyter.widget-view+json", None)
    target.write_text(json.dumps(notebook))


def _title(path: Path) -> str:
    """The notebook's own title, its first `# ` heading ("05 · Fine-tune SmolLM2 with PEFT")."""
    for cell in json.loads(path.read_text())["cells"]:
        if cell["cell_type"] == "markdown":
            for line in "".join(cell["source"]).splitlines():
                if line.startswith("# "):
                    return line[2:].strip()
    raise ValueError(f"{path.name} has no '# ' title in its markdown cells")


def _md_link(target: str) -> str:
    """Links to the instructor's guide stay links; other Markdown files in the repo are
    GitHub-only: such links go to the home page."""
    if target == "docs/workshop.md":
        return "workshop.md"
    return target if target.startswith(("notebooks/", "exercises/", "solutions/")) else "index.md"


def _copy_mathjax(target: Path) -> None:
    """MathJax from the jupyter-server-mathjax package: math renders with no network."""
    import jupyter_server_mathjax

    static = Path(jupyter_server_mathjax.__file__).parent / "static"
    shutil.copytree(static, target)
    (target / "config" / "course.js").write_text(MATHJAX_CONFIG)
    # MathJax 2.7 declares a placeholder font at url('about:blank'), which Chromium refuses with a
    # console error; a local() source that does not exist is the same placeholder, quietly.
    combined = target / "config" / "TeX-AMS-MML_HTMLorMML-full.js"
    text = combined.read_text()
    blank = "src:\"url('about:blank')\""
    if blank not in text:
        raise RuntimeError(f"{combined} changed: update the MathJax placeholder-font patch")
    combined.write_text(text.replace(blank, "src:\"local('MathJax_Blank')\""))


def write_config(source: Path, out: Path, nav: list) -> Path:
    """mkdocs.yml for the assembled pages."""
    import yaml

    config = {
        "site_name": "LoRA from the ground up",
        "docs_dir": str(source),
        "site_dir": str(out),
        "use_directory_urls": False,  # pages open from disk too (file://)
        "theme": {"name": "material", "font": False, "features": ["navigation.footer"]},
        "nav": nav,
        "plugins": [
            {
                "mkdocs-jupyter": {
                    "include_source": False,
                    "execute": False,  # render the outputs the notebooks were executed with
                    "include_requirejs": False,
                    "custom_mathjax_url": MATHJAX_URL,
                    "ignore_h1_titles": True,
                    "cache_dir": str(source.parent / "cache"),
                }
            }
        ],
        "markdown_extensions": ["tables", "admonition"],
        "extra_css": ["assets/course.css"],
    }
    path = source.parent / "mkdocs.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False, allow_unicode=True))
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--notebooks", type=Path, default=ROOT / "notebooks", help="executed lesson notebooks"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "build" / "site")
    args = parser.parse_args()
    source = ROOT / "build" / "site-src" / "docs"
    nav = assemble(args.notebooks.resolve(), source)
    config = write_config(source, args.out.resolve(), nav)
    command = [sys.executable, "-m", "mkdocs", "build", "--quiet", "-f", str(config)]
    result = subprocess.run(command, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    if result.returncode == 0:
        print(f"site: {args.out / 'index.html'}")
    return result.returncode


if __name__ == "__main__":
    sys.exit(main())
