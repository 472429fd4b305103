"""Documentation that cannot drift: every setting, CLI option and public name says what it is.

The configuration reference (``tilefill._config.settings_reference``), the CLI reference (Click) and
the API pages (docstrings) are generated from the code: each check here fails when a new setting,
option, class or function arrives without its doc.
"""

from __future__ import annotations

import dataclasses
import inspect

import click
import pytest

import tilefill
from tilefill import Config
from tilefill._config import _SECTIONS, MOVED, TIERS, ExperimentalConfig, load_config, settings_reference
from tilefill.cli import main

pytestmark = pytest.mark.timeout(60)


def _settings():
    """(dotted key, field) of every setting: Config's own scalars and every field of every section."""
    out = [(f.name, f) for f in dataclasses.fields(Config) if f.name not in _SECTIONS]
    for section, cls in _SECTIONS.items():
        assert dataclasses.is_dataclass(cls) and isinstance(getattr(Config(), section), cls)
        out += [(f"{section}.{f.name}", f) for f in dataclasses.fields(cls)]
    return out


def test_every_config_section_is_a_section_of_config():
    assert set(_SECTIONS) == {f.name for f in dataclasses.fields(Config) if dataclasses.is_dataclass(getattr(Config(), f.name))}


@pytest.mark.parametrize("key,f", _settings(), ids=[k for k, _ in _settings()])
def test_every_setting_has_a_one_line_doc_and_a_tier(key, f):
    doc, tier = f.metadata.get("doc"), f.metadata.get("tier")
    assert tier in TIERS, f"{key}: declare it with setting(..., tier=one of {TIERS})"
    assert isinstance(doc, str) and doc.strip(), f"{key}: declare it with setting(default, 'one line of doc', ...)"
    assert "\n" not in doc and len(doc) <= 200 and doc.endswith("."), f"{key}: one sentence, one line: {doc!r}"


def test_the_reference_lists_every_setting_in_declaration_order():
    rows = settings_reference()
    assert [r["setting"] for r in rows] == [k for k, _ in _settings()]
    for r in rows:
        assert set(r) >= {"section", "key", "type", "default", "tier", "doc"}
        assert r["setting"] == (f"{r['section']}.{r['key']}" if r["section"] else r["key"])
        # the documented default is what a config holds when nothing sets it
        section = getattr(Config(), r["section"]) if r["section"] else Config()
        assert getattr(section, r["key"]) == r["default"], r["setting"]
    assert rows[0]["setting"] == "name" and next(r for r in rows if r["setting"] == "fit.iterations")["type"] == "int"


def test_the_experimental_section_holds_the_research_knobs_and_only_them():
    experimental = {r["setting"] for r in settings_reference() if r["tier"] == "experimental"}
    assert experimental == {f"experimental.{f.name}" for f in dataclasses.fields(ExperimentalConfig)}
    assert experimental == set(MOVED.values())
    # off in every preset: each preset runs the paper's fit as far as these knobs go
    from tilefill._config import preset_names

    for name in preset_names():
        assert load_config(name).experimental == ExperimentalConfig(), name


def _options(cmd: click.Command, path: str):
    for p in cmd.params:
        if isinstance(p, click.Option):
            yield path, p
    if isinstance(cmd, click.Group):
        for name, sub in cmd.commands.items():
            yield from _options(sub, f"{path} {name}")


def _commands(cmd: click.Command, path: str = "tilefill"):
    yield path, cmd
    if isinstance(cmd, click.Group):
        for name, sub in cmd.commands.items():
            yield from _commands(sub, f"{path} {name}")


def test_every_cli_option_and_command_has_help():
    missing = [f"{path} {'/'.join(p.opts)}" for path, p in _options(main, "tilefill")
               if not (p.help or "").strip() and p.name not in ("help", "version")]
    assert missing == [], f"options without help text: {missing}"
    assert [path for path, cmd in _commands(main) if not (cmd.help or "").strip()] == []


def _public_members(obj):
    for name, value in vars(obj).items():
        if name.startswith("_"):
            continue
        if isinstance(value, property):
            yield name, value.fget
        elif isinstance(value, (classmethod, staticmethod)):
            yield name, value.__func__
        elif inspect.isfunction(value):
            yield name, value


def test_every_public_name_and_its_public_methods_have_a_docstring():
    missing = []
    for name in tilefill.__all__:
        if name == "__version__":
            continue
        obj = getattr(tilefill, name)
        if not (obj.__doc__ or "").strip():
            missing.append(name)
        if inspect.isclass(obj):
            missing += [f"{name}.{m}" for m, f in _public_members(obj) if not (f.__doc__ or "").strip()]
    assert missing == [], f"public names without a docstring: {missing}"
