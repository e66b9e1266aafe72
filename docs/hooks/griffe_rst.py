"""A griffe extension: unroll's docstrings use reStructuredText markup inside Google-style
sections; mkdocstrings renders Markdown. Before rendering, this rewrites

* ``:math:`x``` as inline math ``\\(x\\)`` and ``.. math::`` directives as ``$$`` blocks
  (pymdownx.arithmatex, rendered by the vendored KaTeX);
* ``:func:`name``` (``:class:``, ``:meth:``, ``:mod:``, ``:data:``, ``:attr:``, ``:exc:``,
  ``:obj:``, with ``~`` and ``!`` prefixes) as cross-references to the documented object, or as
  code when the name is not unroll's (``torch.func.vmap``) or is private;
* a paragraph ending in ``::`` followed by an indented block, ``.. code-block::`` directives
  and doctest examples (``>>>``) as fenced code blocks;
* ```text <url>`_`` links as Markdown links.

Special methods of classes (``__call__``, ``__getstate__``, ...) are left out of the model (the
API pages render public members). The model is also made to match Python's attributes where a
package re-exports a function under the name of the submodule that defines it
(``unroll.algorithms.admm`` is the function :func:`admm`, not the module ``admm.py``): griffe
would otherwise document the module.

Docstrings themselves are left as they are in the source.
"""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import griffe

_ROLE = re.compile(
    r":(?:py:)?(?P<role>func|class|meth|mod|data|attr|exc|obj|const|math):`(?P<text>[^`]+)`"
)
_LINK = re.compile(r"`(?P<text>[^`<]+?)\s*<(?P<url>[^>`]+)>`__?")
_MATH_DIRECTIVE = re.compile(r"^(?P<indent>\s*)\.\. math::\s*(?P<first>.*)$")
_CODE_DIRECTIVE = re.compile(
    r"^(?P<indent>\s*)\.\. (?:code-block|code|sourcecode)::\s*(?P<lang>\S*)\s*$"
)
_LITERAL = re.compile(r"^(?P<indent>\s*)(?P<text>.*?)(?P<sep>\s?)::\s*$")
_EXPLICIT_TITLE = re.compile(r"^(?P<title>.+?)\s*<(?P<target>[^>]+)>$")
_API_PAGES = Path(__file__).resolve().parent.parent / "api"
_DIRECTIVE = re.compile(r"^:::\s+(?P<path>[\w.]+)\s*$", re.M)


def _indent_of(line: str) -> int:
    return len(line) - len(line.lstrip())


def _block(lines: list[str], start: int, base: int) -> tuple[list[str], int]:
    """The lines from ``start`` indented deeper than ``base`` (blank lines included, trailing
    blank lines excluded) and the index after them."""
    end = start
    last = start
    while end < len(lines):
        if lines[end].strip():
            if _indent_of(lines[end]) <= base:
                break
            last = end + 1
        end += 1
    return lines[start:last], last


def _rewrite_sections(text: str) -> str:
    """Google-style section quirks griffe does not parse: a ``Methods:`` section written as
    prose becomes a paragraph; parameter names grouped over two lines (``a, b,`` / ``c: ...``)
    are joined on one line."""
    lines = text.splitlines()
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        stripped = line.strip()
        if stripped == "Methods:" and i + 1 < len(lines):
            body, after = _block(lines, i + 1, _indent_of(line))
            first = next((b.strip() for b in body if b.strip()), "")
            if not re.match(r"^[\w.]+(\(.*\))?\s*:\s", first):
                indent = line[: _indent_of(line)]
                out.append(f"{indent}**Methods.**")
                out += [f"{indent}{b.strip()}" if b.strip() else "" for b in body]
                i = after
                continue
        if (
            re.match(r"^\s+[\w]+(,\s*[\w]+)*,\s*$", line)
            and i + 1 < len(lines)
            and re.match(r"^\s+[\w]+(,\s*[\w]+)*\s*:\s", lines[i + 1])
        ):
            out.append(line.rstrip() + " " + lines[i + 1].strip())
            i += 2
            continue
        out.append(line)
        i += 1
    return "\n".join(out)


def _open(out: list[str]) -> None:
    """A blank line before a new block, except right after a section title (``Example:``),
    which griffe requires to be followed directly by its indented content."""
    if out and out[-1].strip() and not out[-1].rstrip().endswith(":"):
        out.append("")


def _rewrite_blocks(text: str) -> str:
    lines = _rewrite_sections(text).splitlines()
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        math = _MATH_DIRECTIVE.match(line)
        literal = None if math or line.lstrip().startswith("..") else _LITERAL.match(line)
        if math:
            indent = math["indent"]
            body, i = _block(lines, i + 1, len(indent))
            content = [math["first"]] if math["first"].strip() else []
            content += textwrap.dedent("\n".join(body)).strip("\n").splitlines()
            _open(out)
            out += [f"{indent}$$"] + [f"{indent}{c}" for c in content] + [f"{indent}$$", ""]
            continue
        if line.lstrip().startswith(">>>"):  # a doctest: fenced, so it renders as code
            indent = line[: _indent_of(line)]
            end = i
            while end < len(lines) and lines[end].strip() and _indent_of(lines[end]) >= len(indent):
                end += 1
            _open(out)
            out += [f"{indent}```pycon"] + lines[i:end] + [f"{indent}```", ""]
            i = end
            continue
        code = _CODE_DIRECTIVE.match(line)
        if code:
            indent = code["indent"]
            body, i = _block(lines, i + 1, len(indent))
            content = textwrap.dedent("\n".join(body)).strip("\n").splitlines()
            content = [c for c in content if not c.lstrip().startswith(":")]  # directive options
            _open(out)
            out += [f"{indent}```{code['lang'] or 'text'}"]
            out += [f"{indent}{c}" if c else "" for c in content] + [f"{indent}```", ""]
            continue
        if literal and i + 1 < len(lines):
            indent = literal["indent"]
            body, after = _block(lines, i + 1, len(indent))
            if any(b.strip() for b in body):
                text_part = literal["text"]
                if text_part:
                    out.append(f"{indent}{text_part}" + ("" if literal["sep"] else ":"))
                code = textwrap.dedent("\n".join(body)).strip("\n").splitlines()
                lang = "pycon" if code and code[0].lstrip().startswith(">>>") else "python"
                _open(out)
                out += [f"{indent}```{lang}"] + [f"{indent}{c}" if c else "" for c in code]
                out += [f"{indent}```", ""]
                i = after
                continue
        out.append(line)
        i += 1
    return "\n".join(out)


class RstToMarkdown(griffe.Extension):
    """Rewrite the reStructuredText markup of every docstring of the package (see above)."""

    def on_package(self, *, pkg: griffe.Module, **kwargs) -> None:
        if pkg.name != "unroll":
            return
        self._pkg = pkg
        for module in list(_modules(pkg)):
            _unshadow(module)
        self._documented = _documented_paths(pkg)
        self._visit(pkg, set())

    # ----------------------------------------------------------------------------- walking
    def _visit(self, obj: griffe.Object, seen: set[int]) -> None:
        if id(obj) in seen:
            return
        seen.add(id(obj))
        if obj.docstring is not None:
            obj.docstring.value = self._convert(obj.docstring.value, obj)
        if obj.is_class:  # special methods (__call__, __getstate__, ...) are not documented
            for name in [n for n in obj.members if n.startswith("__") and n.endswith("__")]:
                if name != "__init__":
                    obj.del_member(name)
        for member in list(obj.members.values()):
            target = _target(member) if member.is_alias else member
            if target is not None and target.path.startswith(self._pkg.name):
                self._visit(target, seen)

    def _convert(self, text: str, obj: griffe.Object) -> str:
        text = _rewrite_blocks(text)
        text = _ROLE.sub(lambda m: self._role(m["role"], m["text"], obj), text)
        return _LINK.sub(lambda m: f"[{m['text']}]({m['url']})", text)

    # ----------------------------------------------------------------------- cross-references
    def _role(self, role: str, text: str, obj: griffe.Object) -> str:
        if role == "math":
            return f"\\({text}\\)"
        title = None
        explicit = _EXPLICIT_TITLE.match(text)
        if explicit:
            title, text = explicit["title"], explicit["target"]
        name = text.lstrip("!")
        short = name.startswith("~")
        name = name.lstrip("~.")
        shown = title or (name.rsplit(".", 1)[-1] if short else name)
        if role in ("func", "meth") and not title:
            shown += "()"
        target = None if text.startswith("!") else self._resolve(name, obj)
        if target is None:
            return f"`{shown}`"
        return f"[`{shown}`][{target}]"

    def _resolve(self, name: str, obj: griffe.Object) -> str | None:
        """The documented path of ``name`` seen from ``obj``; None when it is not unroll's or
        not documented (private helpers): then it is shown as code."""
        first, rest = name.split(".")[0], name[len(name.split(".")[0]) :]
        scope: griffe.Object | None = obj
        while scope is not None:  # the object, its class, its module, the package
            member = scope.members.get(first)
            if member is not None:
                found = self._find(member, rest)
                if found is not None:
                    return found
            scope = scope.parent
        if first == self._pkg.name:
            return self._find(self._pkg, rest)
        return None

    def _find(self, start: griffe.Object, rest: str) -> str | None:
        current = _target(start) if start.is_alias else start
        for part in rest.split(".")[1:]:
            if current is None or part not in current.members:
                return None
            member = current.members[part]
            current = _target(member) if member.is_alias else member
        if current is None:
            return None
        return self._documented.get(id(current))


def _target(alias: griffe.Object) -> griffe.Object | None:
    try:
        return alias.final_target
    except (griffe.AliasResolutionError, griffe.CyclicAliasError):
        return None


def _modules(module: griffe.Module):
    yield module
    for member in list(module.members.values()):
        if not member.is_alias and member.is_module:
            yield from _modules(member)


def _unshadow(module: griffe.Module) -> None:
    """``from .admm import admm`` in a package binds ``package.admm`` to the function: make
    griffe's member an alias of that function too (the submodule stays reachable from it)."""
    for name, target_path in module.imports.items():
        member = module.members.get(name)
        if member is None or member.is_alias or not member.is_module:
            continue
        if not target_path.startswith(member.path + "."):
            continue
        target = member.members.get(target_path[len(member.path) + 1 :])
        if target is None or target.is_module:
            continue
        module.set_member(name, griffe.Alias(name, target, parent=module))


def _rendered_members(obj: griffe.Object) -> list[tuple[str, griffe.Object]]:
    """The members mkdocstrings renders for ``obj``: ``__all__`` when the module defines it,
    its public (non-imported, non-private) members otherwise."""
    names = obj.exports if obj.is_module and obj.exports is not None else None
    out = []
    for name, member in obj.members.items():
        if names is not None:
            if name not in names:
                continue
        elif name.startswith("_") or member.is_alias or member.is_module:
            continue
        target = _target(member) if member.is_alias else member
        if target is not None and not (target.is_module and names is None):
            out.append((str(name), target))
    return out


def _documented_paths(pkg: griffe.Module) -> dict[int, str]:
    """``id(object) -> path`` of every object rendered by the API pages (``::: path``)."""
    documented: dict[int, str] = {}

    def add(obj: griffe.Object, path: str, depth: int) -> None:
        documented.setdefault(id(obj), path)
        if depth > 2 or obj.is_function or obj.is_attribute:
            return
        for name, member in _rendered_members(obj):
            if member.is_module:
                documented.setdefault(id(member), f"{path}.{name}")
                continue
            add(member, f"{path}.{name}", depth + 1)

    for page in sorted(_API_PAGES.glob("*.md")):
        for match in _DIRECTIVE.finditer(page.read_text()):
            path = match["path"]
            parts = path.split(".")
            if parts[0] != pkg.name:
                continue
            obj: griffe.Object | None = pkg
            for part in parts[1:]:
                member = obj.members.get(part) if obj is not None else None
                obj = _target(member) if member is not None and member.is_alias else member
            if obj is not None:
                add(obj, path, 0)
    return documented
