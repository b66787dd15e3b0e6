"""MkDocs hooks (mkdocs.yml `hooks:`): pages made at build time from the repository, so that
they cannot drift from it.

- configuration.md: every key of the training config and of the other commands, read with
  `ast` from framework/config/schema.py, framework/config/sections.py and
  framework/config/commands.py (names, types, defaults, and the comments above or beside
  each field). No import: the build needs
  neither torch nor Hydra.
- results/*.md: the pages benchmark scripts write in benchmarks/results/, added as they
  are, under a "Results" section of the navigation listing whichever exist.
"""

from __future__ import annotations

import ast
import html
import io
import re
import tokenize
from dataclasses import dataclass
from pathlib import Path

from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = ROOT / "framework" / "config" / "schema.py"
SECTIONS = ROOT / "framework" / "config" / "sections.py"
COMMANDS = ROOT / "framework" / "config" / "commands.py"
RESULTS = ROOT / "benchmarks" / "results"
REFERENCE_PAGE = "configuration.md"
# The other commands' schemas (framework/config/commands.py), in the order a reader meets them.
COMMANDS_IN_ORDER = (
    ("launch/chat.py", "ChatConfig"),
    ("launch/eval.py", "EvalConfig"),
    ("launch/export.py", "ExportConfig"),
    ("launch/improve.py", "ImproveConfig"),
    ("launch/serve.py", "ServeConfig"),
)


@dataclass
class Field:
    """One field of a config dataclass, as the reference shows it."""

    name: str
    type: str
    default: str
    doc: str
    section: str | None  # the dataclass this field holds, when it is a section


# -- reading the source ----------------------------------------------------------------


def _comments(source: str) -> tuple[dict[int, str], set[int]]:
    """Comment text by line number, and the lines that hold nothing but a comment."""
    comments, code_lines = {}, set()
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            comments[token.start[0]] = token.string.lstrip("#").strip()
        elif token.type not in (tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT):
            code_lines.update(range(token.start[0], token.end[0] + 1))
    return comments, set(comments) - code_lines


def _block_above(line: int, comments: dict[int, str], alone: set[int]) -> str:
    lines = []
    while line - 1 in alone:
        line -= 1
        lines.insert(0, comments[line])
    return " ".join(lines)


class _Module:
    """One schema module: its dataclasses and the module-level names their defaults use."""

    def __init__(self, path: Path):
        self.source = path.read_text()
        self.tree = ast.parse(self.source)
        self.comments, self.alone = _comments(self.source)
        self.classes = {
            n.name: n
            for n in self.tree.body
            if isinstance(n, ast.ClassDef) and any(_is_dataclass(d) for d in n.decorator_list)
        }
        self.names = {
            t.id: n.value
            for n in self.tree.body
            if isinstance(n, ast.Assign | ast.AnnAssign) and n.value is not None
            for t in (n.targets if isinstance(n, ast.Assign) else [n.target])
            if isinstance(t, ast.Name)
        }

    def fields(self, cls: str, sections: set[str]) -> list[Field]:
        """`cls`'s fields; one without a comment of its own that the last comment names
        (checkpoint's `keep` under `every`'s) points to that comment's field."""
        found, last_doc, last_owner = [], "", ""
        for node in self.classes[cls].body:
            if not isinstance(node, ast.AnnAssign) or not isinstance(node.target, ast.Name):
                continue
            name = node.target.id
            above = _block_above(node.lineno, self.comments, self.alone)
            own = " ".join(t for t in (above, self.comments.get(node.lineno, "")) if t)
            if own:
                last_doc, last_owner = own, name
            named = re.search(rf"(?<![\w-]){name}\b(?!\.\w)", last_doc)
            doc = own or (f"See `{last_owner}`." if named else "")
            annotation = ast.unparse(node.annotation)
            section = next((s for s in sections if re.search(rf"\b{s}\b", annotation)), None)
            default = self.default(node.value) if node.value is not None else "required"
            found.append(Field(name, annotation, default, doc, section))
        return found

    def default(self, value: ast.expr) -> str:
        """A field's default as YAML; "" for a section, whose own table gives its defaults."""
        if isinstance(value, ast.Constant) and type(value.value) in (int, float):
            return ast.get_source_segment(self.source, value)  # 2e-3 as written, not 0.002
        factory = _factory(value)
        if factory is None:
            return self.yaml(value)
        if isinstance(factory, ast.Call) and ast.unparse(factory.func) == "list":  # list(NAME)
            return self.yaml(factory.args[0])
        if isinstance(factory, ast.List):  # lambda: ["ifeval"]
            return self.yaml(factory)
        return {"list": "[]", "dict": "{}"}.get(ast.unparse(factory), "")

    def yaml(self, node: ast.expr) -> str:
        """`node`'s value as YAML, or its source where it is more than literals."""
        try:
            return _yaml(self.value(node))
        except ValueError:
            return ast.unparse(node)

    def changed(self, name: str, cls: str) -> dict[str, str]:
        """The keys a section field's default changes from its section's own defaults
        (`field(default_factory=lambda: LoggerConfig(project=...))`)."""
        node = next(
            n
            for n in self.classes[cls].body
            if isinstance(n, ast.AnnAssign) and ast.unparse(n.target) == name
        )
        factory = _factory(node.value)
        if not isinstance(factory, ast.Call):
            return {}
        return {k.arg: self.yaml(k.value) for k in factory.keywords}

    def value(self, node: ast.expr):
        """A default's value where it is a literal or built from module-level literals."""
        if isinstance(node, ast.Name) and node.id == "MISSING":
            return _Required()
        if isinstance(node, ast.Name) and node.id in self.names:
            return self.value(self.names[node.id])
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
            return self.value(node.left) + self.value(node.right)
        if isinstance(node, ast.Call) and ast.unparse(node.func) == "os.path.join":
            return "/".join(str(self.value(a)) for a in node.args)
        if isinstance(node, ast.Call) and ast.unparse(node.func) == "os.environ.get":
            return f"${node.args[0].value}"
        if isinstance(node, ast.List | ast.Tuple):
            return [self.value(e) for e in node.elts]
        return ast.literal_eval(node)

    def docstring(self, cls: str) -> str:
        text = ast.get_docstring(self.classes[cls]) or ""
        return " ".join(text.split())


class _Required:
    pass


def _factory(value: ast.expr | None) -> ast.expr | None:
    """What `field(default_factory=...)` builds: the factory, or a lambda's body."""
    if not (isinstance(value, ast.Call) and ast.unparse(value.func) == "field"):
        return None
    factory = next(k.value for k in value.keywords if k.arg == "default_factory")
    return factory.body if isinstance(factory, ast.Lambda) else factory


def _is_dataclass(decorator: ast.expr) -> bool:
    return ast.unparse(decorator).split("(")[0] == "dataclass"


def _yaml(value) -> str:
    if isinstance(value, _Required):
        return "required"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_yaml(v) for v in value) + "]"
    return str(value)


# -- writing the page --------------------------------------------------------------------


def _text(markdown: str) -> str:
    """A comment as table-cell text: HTML and pipes escaped outside `code` (a table's pipes
    inside code spans are no cell borders to Python-Markdown)."""
    parts = markdown.split("`")
    parts[::2] = [html.escape(p, quote=False).replace("|", "\\|") for p in parts[::2]]
    return "`".join(parts)


class _Page:
    """The reference page, written section by section."""

    def __init__(self, modules: list[_Module]):
        self.modules = modules
        self.classes = {cls for m in modules for cls in m.classes}
        self.lines: list[str] = []

    def add(self, *lines: str) -> None:
        self.lines += lines

    def section(
        self, cls: str, near: _Module, prefix: str, level: int, overrides: dict[str, str]
    ) -> None:
        """`cls`'s keys as a table, then a sub-heading for each field that is a section.
        `cls` is looked up in `near` first, the module that names it, then in the others
        (commands.py's EvalConfig is not a training section of the same name)."""
        module = next(m for m in [near, *self.modules] if cls in m.classes)
        fields = module.fields(cls, self.classes)
        if intro := module.docstring(cls):
            self.add(_text(intro), "")
        self.add("| key | type | default | what |", "| --- | --- | --- | --- |")
        for f in fields:
            if f.section and not f.type.startswith("list"):
                continue
            default = overrides.get(f.name, f.default)
            self.add(f"| `{prefix}{f.name}` | `{f.type}` | `{default}` | {_text(f.doc)} |")
        self.add("")
        for f in fields:
            if f.section:
                key = f"{prefix}{f.name}{'[]' if f.type.startswith('list') else ''}"
                self.add(f"{'#' * level} `{key}`", "")
                if f.doc:
                    self.add(_text(f.doc), "")
                overrides = module.changed(f.name, cls)
                self.section(f.section, module, f"{key}.", level + 1, overrides)


def config_reference() -> str:
    """The configuration reference page, as Markdown."""
    schema, sections, commands = _Module(SCHEMA), _Module(SECTIONS), _Module(COMMANDS)
    commands.names = {**schema.names, **commands.names}  # what commands.py imports from it
    page = _Page([schema, sections, commands])
    page.add(
        "# Configuration reference",
        "",
        "Generated when the site is built, from the dataclasses of",
        "`framework/config/schema.py` and `framework/config/sections.py` (training:",
        "`launch/train.py`, `launch/prepare.py`) and `framework/config/commands.py` (the",
        "other commands), and their comments: these",
        "dataclasses hold every default. Set a key on the command line as `section.key=value`",
        "(`trainer.lr=1e-4`); YAML files under `conf/` and `launch/conf/` set only what an",
        "option changes. A misspelt key or a wrong type stops the command at start-up.",
        "",
        "## Training: `launch/train.py`",
        "",
    )
    for f in schema.fields("TrainConfig", page.classes):
        page.add(f"### `{f.name}`", "")
        page.section(f.section, schema, f"{f.name}.", 4, {})
    for script, cls in COMMANDS_IN_ORDER:
        page.add(f"## `{script}`", "")
        page.section(cls, commands, "", 3, {})
    return "\n".join(page.lines) + "\n"


# -- MkDocs events -----------------------------------------------------------------------


def _title(page: Path) -> str:
    for line in page.read_text().splitlines():
        if line.startswith("# "):
            return line[2:].strip()
    return page.stem.replace("_", " ")


def _results() -> list[Path]:
    return sorted(RESULTS.glob("*.md"))


def on_config(config):
    pages = [{_title(p): f"results/{p.name}"} for p in _results()]
    if pages and config.nav is not None:
        config.nav.append({"Results": pages})
    return config


def on_files(files, config):
    files.append(File.generated(config, REFERENCE_PAGE, content=config_reference()))
    for page in _results():
        files.append(File.generated(config, f"results/{page.name}", abs_src_path=str(page)))
    return files
