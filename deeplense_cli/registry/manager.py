"""Plugin discovery: every plugin, built-in or third-party, arrives through the
``deeplense`` entry-point group and is loaded by the same code.

A plugin that fails to import, or registers something broken, is reported and skipped.
``DEEPLENSE_BLOCK_PLUGINS=name1,name2`` blocks plugins by entry-point name.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import pluggy

from deeplense_cli.core.errors import DeepLenseError, did_you_mean
from deeplense_cli.registry import hookspecs
from deeplense_cli.registry.architecture import Architecture, validate

ENTRY_POINT_GROUP = "deeplense"

_pm: pluggy.PluginManager | None = None
_reported: set[str] = set()
_dists: dict[str, str] = {}


def warn(message: str) -> None:
    """Print a plugin warning to stderr, once per message per process."""
    if message in _reported:
        return
    _reported.add(message)
    print(f"Warning: {message}", file=sys.stderr)


def blocked() -> set[str]:
    raw = os.environ.get("DEEPLENSE_BLOCK_PLUGINS", "")
    return {name.strip() for name in raw.split(",") if name.strip()}


def get_plugin_manager() -> pluggy.PluginManager:
    """The process-wide plugin manager, loading entry points on first use."""
    global _pm
    if _pm is None:
        pm = pluggy.PluginManager("deeplense")
        pm.add_hookspecs(hookspecs)
        skip = blocked()
        for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            if ep.name in skip or pm.has_plugin(ep.name):
                continue
            try:
                module = ep.load()
                pm.register(module, name=ep.name)
            except Exception as exc:  # a broken plugin must not break the CLI
                warn(f"plugin {ep.name!r} ({ep.value}) failed to load and was skipped: {exc}")
                continue
            _dists[ep.name] = ep.dist.name if ep.dist is not None else "?"
        _pm = pm
    return _pm


def reset() -> None:
    """Forget the loaded plugins (tests use this after changing entry points)."""
    global _pm
    _pm = None
    _reported.clear()
    _dists.clear()


def distribution_of(plugin_name: str) -> str:
    get_plugin_manager()
    return _dists.get(plugin_name, "")


def _call_each(hook_name: str, **kwargs: Any) -> None:
    """Call one hook implementation at a time so failures are blamed on their plugin."""
    pm = get_plugin_manager()
    caller = getattr(pm.hook, hook_name)
    for impl in caller.get_hookimpls():
        args = {name: kwargs[name](impl.plugin_name) for name in impl.argnames}
        try:
            impl.function(**args)
        except DeepLenseError:
            raise
        except Exception as exc:
            warn(f"plugin {impl.plugin_name!r} failed in {hook_name} and was skipped: {exc}")


def add_commands(cli: Any) -> None:
    """Let plugins add subcommands to the root click group ``cli`` (a failing one is skipped)."""
    _call_each("register_commands", cli=lambda _plugin: cli)


def architectures() -> dict[str, Architecture]:
    """All registered architectures, keyed by lower-case name, rebuilt on every call."""
    found: dict[str, Architecture] = {}

    def make_register(plugin_name: str) -> Callable[[Any], None]:
        def register(arch: Any) -> None:
            try:
                arch = validate(arch)
            except ValueError as exc:
                warn(f"plugin {plugin_name!r} registered a broken architecture (skipped): {exc}")
                return
            key = arch.name.lower()
            if key in found:
                other = found[key].plugin
                raise DeepLenseError(
                    f"architecture name {arch.name!r} is registered by two plugins, "
                    f"{other!r} and {plugin_name!r}; uninstall or block one "
                    f"(DEEPLENSE_BLOCK_PLUGINS={plugin_name})"
                )
            found[key] = Architecture(**{**arch.__dict__, "plugin": plugin_name})

        return register

    _call_each("register_architectures", register=make_register)
    return dict(sorted(found.items()))


@dataclass(frozen=True)
class ExportFormat:
    name: str
    command: Any  # a click command; the CLI checks it (the registry does not import click)
    plugin: str


_FORMAT_NAME = re.compile(r"^[a-z][a-z0-9_\-]*$")


def export_formats(reserved: Iterable[str] = ()) -> dict[str, ExportFormat]:
    """Export formats registered by plugins, keyed by name; ``reserved`` names (the built-in
    formats) and repeats are skipped with a warning, as are invalid names."""
    taken = set(reserved)
    found: dict[str, ExportFormat] = {}

    def make_register(plugin_name: str) -> Callable[[Any, Any], None]:
        def register(name: Any, command: Any) -> None:
            if not isinstance(name, str) or not _FORMAT_NAME.match(name):
                warn(f"plugin {plugin_name!r} registered an invalid export format name {name!r}")
            elif name in taken or name in found:
                warn(
                    f"plugin {plugin_name!r}: export format {name!r} is already registered; skipped"
                )
            else:
                found[name] = ExportFormat(name, command, plugin_name)

        return register

    _call_each("register_export_formats", register=make_register)
    return found


@dataclass(frozen=True)
class LoggerType:
    """An experiment tracker a plugin registered (``register_loggers``)."""

    name: str
    factory: Callable[[], Any]  # a new logger per run (deeplense_cli.tracking.Logger)
    plugin: str
    requires: tuple[str, ...] = ()  # modules imported before a run starts
    install: str = ""  # how to install them, for the error when one is missing


def _logger_problem(name: Any, factory: Any, requires: Any, install: Any) -> str | None:
    if not isinstance(name, str) or not _FORMAT_NAME.match(name.lower()):
        return f"invalid name {name!r}"
    if not callable(factory):
        return f"{name!r}: the factory is not callable"
    if not isinstance(requires, list | tuple) or not all(
        isinstance(m, str) and m for m in requires
    ):
        return f"{name!r}: requires must be a list of module names, got {requires!r}"
    if not isinstance(install, str):
        return f"{name!r}: install must be a string, got {install!r}"
    return None


def loggers() -> dict[str, LoggerType]:
    """Experiment trackers registered by plugins, keyed by lower-case name, rebuilt on every
    call. A broken registration is skipped with a warning; one name from two plugins is an
    error naming both (never a silent choice)."""
    found: dict[str, LoggerType] = {}

    def make_register(plugin_name: str) -> Callable[..., None]:
        def register(name: Any, factory: Any, requires: Any = (), install: Any = "") -> None:
            if isinstance(requires, str):
                requires = (requires,)
            problem = _logger_problem(name, factory, requires, install)
            if problem:
                warn(f"plugin {plugin_name!r} registered a broken logger (skipped): {problem}")
                return
            key = name.lower()
            if key in found:
                raise DeepLenseError(
                    f"logger name {name!r} is registered by two plugins, "
                    f"{found[key].plugin!r} and {plugin_name!r}; uninstall or block one "
                    f"(DEEPLENSE_BLOCK_PLUGINS={plugin_name})"
                )
            found[key] = LoggerType(key, factory, plugin_name, tuple(requires), install)

        return register

    _call_each("register_loggers", register=make_register)
    return dict(sorted(found.items()))


def get_architecture(name: str) -> Architecture:
    """Look up an architecture by case-insensitive name; a clear error if unknown."""
    archs = architectures()
    try:
        return archs[name.lower()]
    except KeyError:
        known = ", ".join(a.name for a in archs.values()) or "none (no plugins loaded)"
        hint = did_you_mean(name, [a.name for a in archs.values()])
        raise DeepLenseError(
            f"unknown model {name!r}{hint}; available: {known} (see `deeplense models`)"
        ) from None


def plugin_summary() -> list[dict[str, Any]]:
    """One entry per loaded plugin: name, distribution, what it registers."""
    pm = get_plugin_manager()
    archs = architectures()
    trackers = loggers()
    rows = []
    for name, plugin in sorted(pm.list_name_plugin(), key=lambda item: str(item[0])):
        if plugin is None:
            continue
        hooks = sorted(impl.name for impl in pm.get_hookcallers(plugin) or [])
        rows.append(
            {
                "name": name,
                "distribution": distribution_of(str(name)),
                "module": getattr(plugin, "__name__", repr(plugin)),
                "hooks": hooks,
                "architectures": [a.name for a in archs.values() if a.plugin == name],
                "loggers": [t.name for t in trackers.values() if t.plugin == name],
            }
        )
    return rows
