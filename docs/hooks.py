"""mkdocs hooks: the references that must not drift are generated from the code when the site is built.

A page holds a marker where a generated part goes, so that it stays readable as plain Markdown:

- ``<!-- generated: config-reference -->`` (configuration.md): every setting, one table per section, from
  ``tilefill._config.settings_reference()`` (section, key, type, default, tier, doc; in declaration order),
  or, where that function is missing, from the config dataclasses' fields and their ``metadata``;
- ``<!-- generated: api-reference -->`` (api.md): one mkdocstrings block per name of ``tilefill.__all__``,
  found where it is defined, so that moving it between private modules changes nothing here.

Under ``mkdocs build --strict`` a warning fails the build: a setting without its doc or tier, or a public
name without a docstring, is logged as one.
"""

from __future__ import annotations

import dataclasses
import inspect
import logging

log = logging.getLogger("mkdocs.plugins.tilefill")  # under "mkdocs": --strict counts its warnings

CONFIG_MARKER = "<!-- generated: config-reference -->"
API_MARKER = "<!-- generated: api-reference -->"
API_ORDER = ["fill_scene", "fill_batch", "load_config", "Config", "ClusterSpec", "FillReport", "FillFailed",
             "BatchReport", "TileGrid", "Tile", "TilefillError"]
TIER_NOTES = {
    "user": "what a user may set for a run",
    "expert": "the method's hyperparameters and the recipe's rules: change them to study the method",
    "experimental": "measured and off in every preset; kept to reproduce the research notes",
}


def on_page_markdown(markdown: str, page, config, files) -> str:
    if CONFIG_MARKER in markdown:
        markdown = markdown.replace(CONFIG_MARKER, config_reference())
    if API_MARKER in markdown:
        markdown = markdown.replace(API_MARKER, api_reference())
    return markdown


def settings() -> tuple[list[dict], bool]:
    """Every setting as a dict (section, key, type, default, tier, doc), and whether the config module
    declared them itself (``settings_reference``) rather than this fallback reading its dataclasses."""
    from tilefill import _config

    declared = getattr(_config, "settings_reference", None)
    if declared is not None:
        return [dict(s) for s in declared()], True
    rows = []
    top = _config.Config()
    for outer in dataclasses.fields(top):
        value = getattr(top, outer.name)
        inner = [(outer.name, f, getattr(value, f.name)) for f in dataclasses.fields(value)] \
            if dataclasses.is_dataclass(value) else [("", outer, value)]
        for section, f, default in inner:
            rows.append({"section": section, "key": f.name, "type": str(f.type), "default": default,
                         "tier": f.metadata.get("tier", ""), "doc": f.metadata.get("doc", "")})
    return rows, False


def _value(v) -> str:
    """A default as it is written in YAML."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if v is None:
        return "null"
    if isinstance(v, (tuple, list)):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    if isinstance(v, str):
        return v if v else '""'
    return repr(v) if isinstance(v, float) else str(v)


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def _preset_values(rows: list[dict]) -> dict[tuple[str, str], list[str]]:
    """(section, key) -> ``preset: value`` for each shipped preset that sets another value than the default."""
    from tilefill._config import load_config, preset_names

    out: dict[tuple[str, str], list[str]] = {}
    for name in preset_names():
        cfg = load_config(name)
        for r in rows:
            if not r["section"] or r["key"] == "name":
                continue
            value = getattr(getattr(cfg, r["section"], None), r["key"], r["default"])
            if value != r["default"]:
                out.setdefault((r["section"], r["key"]), []).append(f"`{name}`: `{_value(value)}`")
    return out


def config_reference() -> str:
    """The settings as Markdown: a count per tier, then one table per section."""
    rows, declared = settings()
    if not declared:
        log.info("tilefill._config has no settings_reference(): the configuration reference reads the dataclasses")
    for r in rows:
        name = f"{r['section']}.{r['key']}" if r["section"] else r["key"]
        if declared and not (str(r.get("doc", "")).strip() and r.get("tier")):
            log.warning(f"configuration reference: setting {name} has no one-line doc or no tier")
    presets = _preset_values(rows)
    tiers = [t for t in TIER_NOTES if any(r["tier"] == t for r in rows)]
    out = []
    if tiers:
        out += [f"{len(rows)} settings: " + ", ".join(
            f"{sum(r['tier'] == t for r in rows)} *{t}* ({TIER_NOTES[t]})" for t in tiers) + ".", ""]
    sections = list(dict.fromkeys(r["section"] for r in rows))
    for section in sections:
        out += [f"### `{section}`" if section else "### Top level", ""]
        if section == "experimental":
            out += ['!!! warning "Experimental"', "    Measured and not adopted: every preset leaves these off. "
                    "What each one measured is in the [research notes](research.md).", ""]
        out += ["| setting | default | presets | tier | what it does |", "|---|---|---|---|---|"]
        for r in (r for r in rows if r["section"] == section):
            key = f"{section}.{r['key']}" if section else r["key"]
            given = "; ".join(presets.get((section, r["key"]), [])) or ""
            out.append(f"| `{key}` | `{_cell(_value(r['default']))}` | {_cell(given)} | {r['tier'] or ''} | "
                       f"{_cell(r['doc']) or ''} |")
        out.append("")
    return "\n".join(out)


def api_reference() -> str:
    """A mkdocstrings block per public name (in ``API_ORDER``, then any other), each where it is defined."""
    import tilefill

    names = [n for n in tilefill.__all__ if n != "__version__"]
    objects = {n: getattr(tilefill, n) for n in names}
    # the order a reader meets them in: what runs, then what it takes, then what it returns
    ordered = sorted(names, key=lambda n: (API_ORDER.index(n) if n in API_ORDER else len(API_ORDER),
                                           inspect.isclass(objects[n]), names.index(n)))
    out = []
    for name in ordered:
        obj = objects[name]
        if not inspect.getdoc(obj):
            log.warning(f"API reference: tilefill.{name} has no docstring")
        out += [f"::: {obj.__module__}.{obj.__qualname__}", ""]
    return "\n".join(out)
