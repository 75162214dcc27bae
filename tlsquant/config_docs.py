"""``configs/default.toml`` and ``docs/configuration.md``, generated from the config dataclasses.

The defaults and their one-line docs are written once, in :mod:`tlsquant.config`; this module
spells them out as a commented TOML file and as a Markdown reference. ``python -m
tlsquant.config_docs`` rewrites both files in a source checkout (``--check`` only compares);
a test fails when either differs from what is generated.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

from .config import Config

TOML_PATH = Path("configs") / "default.toml"
REFERENCE_PATH = Path("docs") / "configuration.md"
_COMMENT_COLUMN = 30  # comments line up here unless the setting is longer
_MAX_LINE = 100  # arrays longer than this are wrapped

_TOML_HEADER = """\
# tlsquant default analysis configuration. Every size is in µm, µm² or mm².
# Load another file with --config, or change one value with --set section.key=value.
# Generated from tlsquant/config.py by `python -m tlsquant.config_docs`: edit the docs there, not here.
"""

_REFERENCE_HEADER = """\
# Configuration reference

Every setting of the analysis, its default and what it does; sizes are in µm, µm² or mm².
Pass a TOML file with `--config` (keys you leave out keep their defaults) or change one value with
`--set section.key=value`. [`configs/default.toml`](../configs/default.toml) holds the same defaults as a file.
Both are generated from `tlsquant/config.py` by `python -m tlsquant.config_docs`: edit the docs there.
"""


def doc(item: dataclasses.Field) -> str:
    """The one-line doc of a config field; a field without one is a programming error."""
    text = item.metadata.get("doc")
    if not text:
        raise TypeError(f"config setting {item.name!r} has no doc: declare it with tlsquant.config.setting(default, doc)")
    return text


def toml_value(value: Any) -> str:
    """A default as TOML: strings quoted, booleans lower-case, tuples as arrays."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise TypeError(f"no TOML form for {value!r}")  # pragma: no cover


def _line(text: str, comment: str) -> str:
    return f"{text:<{_COMMENT_COLUMN - 2}}  # {comment}" if len(text) < _COMMENT_COLUMN - 2 else f"{text}  # {comment}"


def _setting_lines(name: str, value: Any, comment: str | None) -> list[str]:
    """``name = value  # comment``; a long array is wrapped, one line per ~100 characters."""
    text = f"{name} = {toml_value(value)}"
    if len(text) > _MAX_LINE and isinstance(value, tuple):
        rows, row = [], []
        for item in value:
            if row and len(", ".join(row + [toml_value(item)])) > _MAX_LINE - 4:
                rows.append(row)
                row = []
            row.append(toml_value(item))
        rows.append(row)
        first = f"{name} = ["
        return ([_line(first, comment) if comment else first] + ["    " + ", ".join(row) + "," for row in rows] + ["]"])
    return [_line(text, comment) if comment else text]


def _table(name: str, value: Any, comment: str, documented: set[type]) -> list[str]:
    """A TOML table for a settings dataclass; its keys' docs are written the first time its type appears."""
    lines = ["", _line(f"[{name}]", comment)]
    show_docs = type(value) not in documented
    documented.add(type(value))
    subtables = []
    for item in dataclasses.fields(value):
        current = getattr(value, item.name)
        if dataclasses.is_dataclass(current) or isinstance(current, dict):
            subtables.append((item, current))
        else:
            lines += _setting_lines(item.name, current, doc(item) if show_docs else None)
    for item, current in subtables:
        if isinstance(current, dict):
            if current:  # pragma: no cover - no built-in default fills a table
                raise TypeError(f"{name}.{item.name}: a table with entries by default is not supported")
            lines += ["", _line(f"[{name}.{item.name}]", doc(item))]
            lines += [f"# {example}" for example in item.metadata.get("example", ())]
        else:
            lines += _table(f"{name}.{item.name}", current, doc(item), documented)
    return lines


def default_toml(config: Config | None = None) -> str:
    """The text of ``configs/default.toml``: every setting of ``config`` (the defaults) with its doc."""
    config = Config() if config is None else config
    lines, documented = [], set()
    for item in dataclasses.fields(config):
        lines += _table(item.name, getattr(config, item.name), doc(item), documented)
    return _TOML_HEADER + "\n".join(lines) + "\n"


def _markdown_cell(text: str) -> str:
    return text.replace("|", "\\|")


def _rows(prefix: str, value: Any) -> list[str]:
    rows = []
    for item in dataclasses.fields(value):
        current = getattr(value, item.name)
        key = f"{prefix}.{item.name}"
        if dataclasses.is_dataclass(current):
            rows += _rows(key, current)
        elif isinstance(current, dict):
            example = "<br>".join(f"`{line}`" for line in item.metadata.get("example", ()))
            rows.append(f"| `[{key}]` | (empty table) | {_markdown_cell(doc(item))}"
                        f"{'; e.g. ' + _markdown_cell(example) if example else ''} |")
        else:
            rows.append(f"| `{key}` | `{_markdown_cell(toml_value(current))}` | {_markdown_cell(doc(item))} |")
    return rows


def reference_markdown(config: Config | None = None) -> str:
    """The text of ``docs/configuration.md``: one table per section, every key with its default and doc."""
    config = Config() if config is None else config
    parts = [_REFERENCE_HEADER]
    for item in dataclasses.fields(config):
        section = getattr(config, item.name)
        parts.append(f"\n## `[{item.name}]`\n\n{doc(item)}\n\n| key | default | meaning |\n|---|---|---|\n"
                     + "\n".join(_rows(item.name, section)) + "\n")
    return "".join(parts)


def generated_files() -> dict[Path, str]:
    """Each generated file (relative to the repository root) and its text."""
    return {TOML_PATH: default_toml(), REFERENCE_PATH: reference_markdown()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tlsquant.config_docs", description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=str(Path(__file__).resolve().parents[1]),
                        help="repository root (default: the checkout holding this module)")
    parser.add_argument("--check", action="store_true", help="only report files that differ (exit status 1)")
    args = parser.parse_args(argv)
    root = Path(args.root)
    stale = []
    for relative, text in generated_files().items():
        path = root / relative
        if path.is_file() and path.read_text(encoding="utf-8") == text:
            continue
        stale.append(relative)
        if not args.check:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
    for relative in stale:
        print(f"{'differs' if args.check else 'wrote'}: {relative}")
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
