"""``--print-config``: a run's full resolved config as YAML, every field with its documentation.

The documentation is the comment each field carries where it is declared (config.py's sections and each objective's
Options dataclass: the comment on its line and the comment lines right above it), so it is written once. The
objective's options are marked ``(default)`` where the config does not set them.
"""

from __future__ import annotations

import dataclasses
import inspect
import io
import tokenize

import yaml

from .config import Config


def field_comments(cls) -> dict[str, str]:
    """{field name: its comment} from the dataclass's source (the trailing comment, after the lines above it)."""
    lines = inspect.getsource(cls).splitlines(keepends=True)
    comments: dict[int, str] = {}
    for tok in tokenize.generate_tokens(io.StringIO("".join(lines)).readline):
        if tok.type == tokenize.COMMENT:
            comments[tok.start[0]] = tok.string.lstrip("#").strip()
    docs: dict[str, str] = {}
    names = {f.name for f in dataclasses.fields(cls)}
    for number, line in enumerate(lines, start=1):
        name = line.strip().split(":", 1)[0]
        if name not in names or not line.startswith("    ") or line.startswith("     "):
            continue
        above, previous = [], number - 1
        while previous in comments and lines[previous - 1].strip().startswith("#"):
            above.insert(0, comments[previous])
            previous -= 1
        docs[name] = " ".join(above + ([comments[number]] if number in comments else []))
    return docs


def _scalar(value) -> str:
    return yaml.safe_dump(value, default_flow_style=True, width=10_000).strip().removesuffix("...").strip()


def describe(cfg: Config) -> str:
    """The resolved config of ``cfg`` as commented YAML (it loads back with --config)."""
    from .objectives import REGISTRY

    from .config import _SETTINGS_IN_USE
    from .objectives import get_objective

    objective = get_objective(cfg.method, **cfg.objective)
    # Settings this method or mode ignores are shown commented out, so the output loads back with --config.
    unused = {(section, key) for section, key, _, _, in_use in _SETTINGS_IN_USE if not in_use(cfg, objective)}
    out = [f"# diffalign train --method {cfg.method}: {REGISTRY[cfg.method].summary}"]
    top = field_comments(Config)
    for f in dataclasses.fields(Config):
        value = getattr(cfg, f.name)
        if f.name == "objective":
            out.append(f"objective:  # {top['objective']}")
            out += _objective_lines(cfg)
        elif dataclasses.is_dataclass(value):
            out.append(f"{f.name}:")
            docs = field_comments(type(value))
            for sub in dataclasses.fields(value):
                doc = docs.get(sub.name, "")
                off = "# " if (f.name, sub.name) in unused else ""
                doc += " (not used here)" if off else ""
                out.append(f"  {off}{sub.name}: {_scalar(getattr(value, sub.name))}" + (f"  # {doc}" if doc else ""))
        else:
            out.append(f"{f.name}: {_scalar(value)}  # {top.get(f.name, '')}")
    return "\n".join(out) + "\n"


def _objective_lines(cfg: Config) -> list[str]:
    """The method's options (its Options dataclass), documented where declared (a subclass may redeclare a field
    with its own default and comment)."""
    from .objectives import REGISTRY

    options = REGISTRY[cfg.method].Options
    docs: dict[str, str] = {}
    for klass in options.__mro__:
        if dataclasses.is_dataclass(klass):
            for name, doc in field_comments(klass).items():
                docs.setdefault(name, doc)
    lines = []
    for f in dataclasses.fields(options):
        given = f.name in cfg.objective
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        value = cfg.objective[f.name] if given else default
        doc = docs.get(f.name, "") + ("" if given else " (default)")
        lines.append(f"  {f.name}: {_scalar(value)}  # {doc.strip()}")
    return lines
