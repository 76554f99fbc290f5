"""Every server setting with its value, its environment variable and its
documentation: ``fleetrpc serve --print-config``.

The output is a TOML document: saved to a file, it is a valid configuration
(unset values and secrets are commented out, never printed).
"""

from __future__ import annotations

import json
from typing import Any

import msgspec

from .server import SECTIONS, ServerSettings, env_name

__all__ = ["Setting", "describe", "render"]


class Setting(msgspec.Struct, frozen=True):
    """One setting as described."""

    section: str
    key: str
    value: Any
    default: Any
    doc: str
    env: str
    secret: bool

    @property
    def name(self) -> str:
        return f"{self.section}.{self.key}"


def describe(settings: ServerSettings) -> list[Setting]:
    """Every setting of ``settings``, in declaration order."""
    out = []
    for section, cls in SECTIONS.items():
        values = getattr(settings, section)
        for field in msgspec.inspect.type_info(cls).fields:
            meta = field.type
            if isinstance(meta, msgspec.inspect.UnionType):  # Annotated[...] | None
                meta = next((t for t in meta.types if isinstance(t, msgspec.inspect.Metadata)), meta)
            doc, secret = "", False
            if isinstance(meta, msgspec.inspect.Metadata):
                doc = (meta.extra_json_schema or {}).get("description", "")
                secret = bool((meta.extra or {}).get("secret"))
            default = field.default_factory() if field.default_factory is not msgspec.NODEFAULT else field.default
            out.append(Setting(section, field.name, getattr(values, field.name), default, doc,
                               env_name(section, field.name), secret))
    return out


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a TOML basic string is JSON-escaped text
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {_toml(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"cannot write {value!r} as TOML")


def render(settings: ServerSettings) -> str:
    """The settings as a commented TOML document."""
    lines = ["# fleetrpc serve: every setting, its value and what it does.",
             "# Environment variables (shown per setting) override the file.", ""]
    current = None
    for s in describe(settings):
        if s.section != current:
            current = s.section
            lines += ["", f"[{s.section}]", f"# {SECTIONS[s.section].__doc__.strip()}", ""]
        lines.append(f"# {s.doc}" if s.doc else "#")
        lines.append(f"#   env {s.env}; default {'(unset)' if s.default is None else _toml(s.default)}")
        if s.secret and s.value not in (None, [], {}):
            lines.append(f"# {s.key} = (secret, set)")
        elif s.value is None:
            lines.append(f"# {s.key} = (unset)")
        else:
            lines.append(f"{s.key} = {_toml(s.value)}")
    return "\n".join(lines).lstrip("\n") + "\n"


def markdown(settings: ServerSettings | None = None) -> str:
    """The settings reference of docs/configuration.md (defaults when
    ``settings`` is None); ``python -m fleetrpc.config.describe`` prints it."""
    settings = settings or ServerSettings()
    out = []
    current = None
    for s in describe(settings):
        if s.section != current:
            current = s.section
            out += ["", f"### `[{s.section}]`", "", SECTIONS[s.section].__doc__.strip(), "",
                    "| key | default | environment | what it does |", "|---|---|---|---|"]
        default = "(unset)" if s.default is None else f"`{_toml(s.default)}`"
        doc = s.doc.replace("|", "\\|")
        out.append(f"| `{s.key}` | {default} | `{s.env}` | {doc}{' (secret)' if s.secret else ''} |")
    return "\n".join(out).lstrip("\n") + "\n"


if __name__ == "__main__":
    print(markdown(), end="")
