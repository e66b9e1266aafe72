"""The documentation site: it builds with ``mkdocs build --strict``, every public name has a
reference entry, the guides' code runs, and the pages render offline in a real browser.

The site is built once per run into a temporary folder with one notebook executed
(``UNROLL_DOCS_EXECUTE``; the published build executes all of them). With ``UNROLL_DOCS_SITE``
set to a built site, the tests check that site instead of building one. The browser is
Debian's ``chromium`` driven by Playwright; screenshots go to ``outputs/docs-screenshots`` (or
``UNROLL_DOCS_SCREENSHOTS``). Without chromium the browser test is skipped, except under CI
(``CI`` set), where it fails.
"""

from __future__ import annotations

import functools
import http.server
import importlib
import inspect
import os
import pkgutil
import re
import shutil
import subprocess
import sys
import threading
import zlib
from pathlib import Path
from urllib.parse import urlparse

import pytest
import torch

import unroll

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
NOTEBOOK = "custom_root_hyperparameters"  # the notebook executed by the test build (~7 s)
CI = bool(os.environ.get("CI"))


# ================================================================================ the build
@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    given = os.environ.get("UNROLL_DOCS_SITE")
    if given:
        return Path(given).resolve()
    out = tmp_path_factory.mktemp("docs") / "site"
    env = dict(os.environ, UNROLL_DOCS_EXECUTE=f"{NOTEBOOK}.ipynb", NO_MKDOCS_2_WARNING="1")
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, "mkdocs build --strict failed:\n" + "\n".join(
        line for line in log.splitlines() if not line.startswith("INFO")
    )
    return out


# ============================================================================ API coverage
def public_modules() -> list[str]:
    """``unroll``, the modules it exports, and every deeper non-private module that declares
    ``__all__`` (a module without it is an implementation file whose public names its package
    re-exports)."""
    top = {f"unroll.{n}" for n in unroll.__all__ if inspect.ismodule(getattr(unroll, n))}
    names = ["unroll"]
    for info in pkgutil.walk_packages(unroll.__path__, "unroll."):
        if any(part.startswith("_") for part in info.name.split(".")):
            continue
        module = importlib.import_module(info.name)
        if info.name in top or hasattr(module, "__all__"):
            names.append(info.name)
    return sorted(names)


def public_names(module_name: str) -> list[str]:
    """``__all__``, or else the names not starting with ``_`` defined in the module."""
    module = importlib.import_module(module_name)
    if hasattr(module, "__all__"):
        return list(module.__all__)
    return [
        name
        for name, value in vars(module).items()
        if not name.startswith("_") and getattr(value, "__module__", None) == module_name
    ]


def read_inventory(path: Path) -> list[str]:
    """The Python object names of a Sphinx ``objects.inv`` (as written by mkdocstrings)."""
    data = path.read_bytes()
    body = zlib.decompress(data.split(b"\n", 4)[4]).decode()
    names = []
    for line in body.splitlines():
        match = re.match(r"(?P<name>\S+)\s+py:\w+\s+-?\d+\s+\S+", line)
        if match:
            names.append(match["name"])
    return names


def resolve(path: str):
    """The object named by a dotted path (modules take precedence over attributes, as in the
    reference pages: ``unroll.algorithms.admm.admm`` is the function in ``admm.py``)."""
    parts = path.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for part in parts[cut:]:
            obj = getattr(obj, part)
        return obj
    raise LookupError(path)


def _identity_counts(obj) -> bool:
    """Objects recognised by identity wherever they are documented; constants only by name."""
    return inspect.ismodule(obj) or inspect.isclass(obj) or callable(obj)


def test_every_public_name_has_a_reference_entry(site):
    documented = set(read_inventory(site / "objects.inv"))
    by_identity = set()
    for name in documented:
        try:
            obj = resolve(name)
        except (LookupError, AttributeError):
            continue
        if _identity_counts(obj):
            by_identity.add(id(obj))
    missing = []
    for module_name in public_modules():
        for name in public_names(module_name):
            path = f"{module_name}.{name}"
            obj = getattr(importlib.import_module(module_name), name)
            if path in documented or (_identity_counts(obj) and id(obj) in by_identity):
                continue
            missing.append(path)
    assert not missing, (
        f"{len(missing)} public names have no reference entry: {missing}. Document them in "
        "docs/api/<module>.md (a `::: unroll.<module>` block renders a module's __all__)."
    )


def test_no_docstring_holds_control_characters():
    """A backslash sequence such as ``\\alpha`` or ``\\big`` in a non-raw docstring becomes a
    control character (BEL, backspace) and breaks the rendered math: docstrings with LaTeX
    must be raw strings."""
    import ast

    bad = []
    for path in sorted(Path(unroll.__file__).parent.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                if any(c in node.value for c in "\x07\x08\x0b\x0c"):
                    bad.append(f"{path.name}:{node.lineno}")
    assert not bad, f"control characters in string literals (use r-strings): {bad}"


def test_public_module_rule_sees_the_subpackages():
    modules = public_modules()
    for name in ("unroll", "unroll.tree", "unroll.physics", "unroll.algorithms", "unroll.data"):
        assert name in modules
    assert "unroll.__main__" not in modules and "unroll._train" not in modules
    assert "custom_root" in public_names("unroll") and "natural_image_crops" in public_names(
        "unroll.data"
    )


def test_every_notebook_is_in_the_navigation():
    config = (ROOT / "mkdocs.yml").read_text()
    gallery = (DOCS / "notebooks.md").read_text()
    for notebook in sorted((ROOT / "notebooks").glob("*.ipynb")):
        assert f"notebooks/{notebook.name}" in config, f"add {notebook.name} to mkdocs.yml nav"
        assert f"notebooks/{notebook.name}" in gallery, f"add {notebook.name} to notebooks.md"


# =========================================================================== guides' code
def _pages_with_code() -> list[Path]:
    return sorted(p for p in DOCS.rglob("*.md") if "```python" in p.read_text())


def python_blocks(page: Path) -> list[str]:
    """The page's ```` ```python ```` blocks (other libraries' code is fenced ```` ```py ````
    and not run)."""
    return [
        m.group(2)
        for m in re.finditer(r"^```python([^\n]*)\n(.*?)^```", page.read_text(), flags=re.S | re.M)
    ]


@pytest.mark.parametrize("page", _pages_with_code(), ids=lambda p: str(p.relative_to(DOCS)))
def test_page_code_runs(page, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # anything a guide writes stays in a temporary folder
    torch.manual_seed(0)
    namespace: dict = {"__name__": "__docs__"}
    for index, block in enumerate(python_blocks(page)):
        code = compile(block, f"{page.relative_to(ROOT)}[python block {index}]", "exec")
        exec(code, namespace)


def test_guides_and_migration_pages_have_runnable_code():
    pages = sorted((DOCS / "guides").glob("*.md")) + sorted((DOCS / "coming-from").glob("*.md"))
    without = [p.name for p in pages if p.stem != "index" and not python_blocks(p)]
    assert not without, f"pages with no ```python block run by the tests: {without}"
    for page in sorted((DOCS / "coming-from").glob("*.md")):
        if page.stem != "index":
            assert "```py\n" in page.read_text(), f"{page.name}: show the other library's code"


# ============================================================================ the browser
def _chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        path = None
    if path is None:
        message = "needs Debian's chromium and playwright (pip install -e '.[docs]')"
        if CI:
            pytest.fail(message + "; .ci/run installs them")
        pytest.skip(message)
    return path


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def server(site):
    handler = functools.partial(_Quiet, directory=str(site))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(scope="module")
def browser():
    executable = _chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=executable,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-quic",
            ],
        )
        yield browser
        browser.close()


class _Tab:
    """One browser tab that records, per visit, the problems seen: failed requests, HTTP
    errors, requests to another host (refused), JavaScript errors."""

    def __init__(self, browser, origin: str):
        self.page = browser.new_page(viewport={"width": 1280, "height": 900})
        self.problems: list[str] = []
        host = urlparse(origin).netloc

        def route(r):
            if urlparse(r.request.url).netloc == host or r.request.url.startswith("data:"):
                r.continue_()
            else:
                self.problems.append(f"request to another host: {r.request.url}")
                r.abort()

        self.page.route("**/*", route)
        self.page.on("requestfailed", self._failed)
        self.page.on(
            "response",
            lambda r: r.status >= 400 and self.problems.append(f"HTTP {r.status}: {r.url}"),
        )
        self.page.on("pageerror", lambda e: self.problems.append(f"javascript error: {e}"))
        self.page.on(
            "console",
            lambda m: m.type == "error" and self.problems.append(f"console error: {m.text}"),
        )

    def _failed(self, request):
        if request.failure != "net::ERR_ABORTED":  # cancelled by the next navigation
            self.problems.append(f"failed: {request.url} ({request.failure})")

    def visit(self, url: str, wait_until: str = "load") -> list[str]:
        self.problems = []
        self.page.goto(url, wait_until=wait_until)
        self.page.evaluate("document.fonts.ready.then(() => true)")
        return self.problems


_MATH = """() => ({
    katex: document.querySelectorAll('.katex').length,
    errors: document.querySelectorAll('.katex-error').length,
    unrendered: [...document.querySelectorAll('.arithmatex')].filter(
        e => !e.querySelector('.katex')).length,
    font: document.fonts.check('16px KaTeX_Main'),
})"""

KEY_PAGES = {
    "home": ("", ["Differentiate through optimisation", "Guides"], 1),
    "api": ("api/implicit/", ["custom_root", "root_vjp", "optimality_fn"], 3),
    "notebook": (f"notebooks/{NOTEBOOK}/", ["Hyperparameter optimisation", "custom_root"], 5),
}


@pytest.mark.parametrize("name", list(KEY_PAGES))
def test_key_page_renders_offline(browser, server, name):
    path, texts, min_math = KEY_PAGES[name]
    tab = _Tab(browser, server)
    problems = tab.visit(f"{server}/{path}", wait_until="networkidle")
    page = tab.page
    shots = Path(os.environ.get("UNROLL_DOCS_SCREENSHOTS", ROOT / "outputs" / "docs-screenshots"))
    shots.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(shots / f"{name}.png"), full_page=name != "api")
    body = page.inner_text("body")
    math = page.evaluate(_MATH)
    images = page.evaluate(
        "[...document.querySelectorAll('.jp-OutputArea-output img')]"
        ".filter(i => i.complete && i.naturalWidth > 100).length"
    )
    page.close()
    assert not problems, problems
    for text in texts:
        assert text in body, f"{text!r} missing from {path or 'the home page'}"
    assert math["katex"] >= min_math and math["errors"] == 0 and math["unrendered"] == 0, math
    assert math["font"], "KaTeX's fonts did not load"
    if name == "notebook":
        assert images >= 1, "the executed notebook shows no plot"


SECTIONS = {  # every page of the site, in three groups (CI reruns "notebooks" on the full site)
    "api": lambda rel: rel.startswith("api"),
    "notebooks": lambda rel: rel.startswith("notebooks"),
    "guides": lambda rel: not rel.startswith(("api", "notebooks")),
}


@pytest.mark.parametrize("section", list(SECTIONS))
def test_every_page_loads_offline(browser, server, site, section):
    pages = sorted(p.relative_to(site).parent.as_posix() for p in site.rglob("index.html"))
    assert len(pages) >= 30
    pages = [rel for rel in pages if SECTIONS[section](rel)]
    assert pages
    # a published site (UNROLL_DOCS_SITE) shows every notebook executed; the test build one
    executed = os.environ.get("UNROLL_DOCS_SITE") or None
    failures = {}
    tab = _Tab(browser, server)
    for rel in pages:
        problems = tab.visit(f"{server}/" + ("" if rel == "." else f"{rel}/"))
        math = tab.page.evaluate(_MATH)
        if math["errors"] or math["unrendered"]:
            problems = [*problems, f"math: {math}"]
        if section == "notebooks" and rel != "notebooks" and (executed or NOTEBOOK in rel):
            outputs = tab.page.locator(".jp-OutputArea-output").count()
            if not outputs:
                problems = [*problems, "a notebook page without outputs"]
        if problems:
            failures[rel] = problems
    tab.page.close()
    assert not failures, failures
