"""MkDocs hooks of the unroll site: offline pages and the choice of notebooks to execute.

* Notebook pages rendered by mkdocs-jupyter carry nbconvert's MathJax loader (a CDN script);
  it is removed here, the vendored KaTeX renders their math like every other page's.
* Every page is checked for resources fetched from another host (scripts, stylesheets, images,
  frames, fonts): each one is a warning, so ``mkdocs build --strict`` fails on it.
* ``<!-- unroll:readme-benchmarks -->`` in a page is replaced by the README's "Benchmarks"
  section (one source for the figures, the machine and the date).
* ``UNROLL_DOCS_EXECUTE`` chooses the notebooks executed at build time: unset or ``all`` runs
  all of them, ``none`` renders them as stored, ``stored`` renders them as stored and fails
  unless every one holds outputs (CI: the test run has just executed them with
  ``pytest --nbmake --overwrite``, so they are not executed twice), and a comma-separated list
  of file names (``custom_root_hyperparameters.ipynb``) runs only those (the docs tests).
"""

from __future__ import annotations

import json
import logging
import os
import re
from html.parser import HTMLParser

from mkdocs.exceptions import PluginError

log = logging.getLogger("mkdocs.plugins.unroll_site")

_MATHJAX = re.compile(r"<!-- Load mathjax -->.*?<!-- End of mathjax configuration -->", re.S)
_MATHJAX_SCRIPT = re.compile(r"<script[^>]*\bsrc=\"[^\"]*mathjax[^\"]*\"[^>]*>\s*</script>", re.I)
_REMOTE = re.compile(r"^\s*(?:[a-z][a-z0-9+.-]*:)?//", re.I)
_CSS_URL = re.compile(r"url\(\s*['\"]?\s*((?:[a-z][a-z0-9+.-]*:)?//[^)'\"]*)", re.I)
# tag -> attributes whose URL the browser fetches by itself (links <a href> are not fetched)
_FETCHED = {
    "script": ("src",),
    "link": ("href",),
    "img": ("src", "srcset"),
    "iframe": ("src",),
    "source": ("src", "srcset"),
    "video": ("src", "poster"),
    "audio": ("src",),
    "embed": ("src",),
    "object": ("data",),
    "input": ("src",),
}


_METADATA_LINKS = {"canonical", "alternate", "author", "license", "next", "prev", "me"}


class _RemoteResources(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.found: list[str] = []
        self._in_style = False

    def handle_starttag(self, tag, attrs):
        self._in_style = tag == "style"
        attrs = dict(attrs)
        if tag == "link" and (attrs.get("rel") or "").lower() in _METADATA_LINKS:
            return  # not fetched by the browser
        for name in _FETCHED.get(tag, ()):
            value = attrs.get(name) or ""
            if any(_REMOTE.match(part.strip()) for part in value.split(",") if part.strip()):
                self.found.append(f"<{tag} {name}={value!r}>")
        self.found.extend(f"style url({u})" for u in _CSS_URL.findall(attrs.get("style") or ""))

    def handle_endtag(self, tag):
        if tag == "style":
            self._in_style = False

    def handle_data(self, data):
        if self._in_style:
            self.found.extend(f"<style> url({u})" for u in _CSS_URL.findall(data))


def remote_resources(html: str) -> list[str]:
    """The resources of ``html`` that a browser would fetch from another host."""
    parser = _RemoteResources()
    parser.feed(html)
    return parser.found


def _has_outputs(path: str) -> bool:
    with open(path, encoding="utf-8") as f:
        cells = json.load(f)["cells"]
    return any(cell.get("outputs") for cell in cells if cell["cell_type"] == "code")


def on_config(config, **kwargs):
    choice = os.environ.get("UNROLL_DOCS_EXECUTE", "all").strip()
    jupyter = config["plugins"].get("mkdocs-jupyter")
    if jupyter is None or choice in ("", "all"):
        return config
    notebooks = os.path.join(config["docs_dir"], "notebooks")
    if choice in ("none", "stored"):
        jupyter.config["execute"] = False
        empty = [
            name
            for name in sorted(os.listdir(notebooks))
            if name.endswith(".ipynb") and not _has_outputs(os.path.join(notebooks, name))
        ]
        if choice == "stored" and empty:
            raise PluginError(
                f"UNROLL_DOCS_EXECUTE=stored, but {', '.join(empty)} hold no outputs: run them "
                "first (python -m pytest --nbmake --overwrite notebooks/) or build with "
                "UNROLL_DOCS_EXECUTE=all."
            )
        return config
    wanted = {name.strip() for name in choice.split(",") if name.strip()}
    missing = wanted - set(os.listdir(notebooks))
    if missing:
        raise ValueError(f"UNROLL_DOCS_EXECUTE names unknown notebooks: {sorted(missing)}")
    others = sorted(f for f in os.listdir(notebooks) if f.endswith(".ipynb") and f not in wanted)
    jupyter.config["execute_ignore"] = [f"notebooks/{name}" for name in others]
    return config


_README_MARK = "<!-- unroll:readme-benchmarks -->"


def readme_section(readme: str, title: str) -> str | None:
    """The body of the README's ``## title`` section (without its heading)."""
    match = re.search(rf"^## {re.escape(title)}[ \t]*\n(.*?)(?=^## |\Z)", readme, re.S | re.M)
    return match.group(1).strip() if match else None


def on_page_markdown(markdown, page, config, **kwargs):
    if _README_MARK not in markdown:
        return markdown
    readme_path = os.path.join(os.path.dirname(config["config_file_path"]), "README.md")
    with open(readme_path, encoding="utf-8") as f:
        section = readme_section(f.read(), "Benchmarks")
    if section is None:
        log.warning("%s: README.md has no '## Benchmarks' section", page.file.src_uri)
        return markdown
    return markdown.replace(_README_MARK, section)


def on_page_content(html, page, **kwargs):
    if page.file.src_uri.endswith(".ipynb"):
        html = _MATHJAX_SCRIPT.sub("", _MATHJAX.sub("", html))
    return html


def on_post_page(output, page, **kwargs):
    for resource in remote_resources(output):
        log.warning("%s loads a resource from another host: %s", page.file.src_uri, resource)
    return output
