"""Recipe overrides (``deeplense data simulate --set KEY=VALUE``): the keys, parsing, checks.

Values come as strings from the command line or as Python values from :func:`simulate_dataset`;
both are checked here and turned into a :class:`~deeplense_cli.simulate.recipe.Recipe`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from deeplense_cli.core.errors import DeepLenseError

if TYPE_CHECKING:
    from deeplense_cli.simulate.recipe import Recipe

MAX_IMAGE_SIZE = 1024

KEY_HELP = {
    "psf_fwhm": "Gaussian PSF FWHM in arcsec",
    "pixel_scale": "arcsec per pixel",
    "image_size": "image side in pixels",
    "einstein_radius": (
        "main-lens theta_E in arcsec, one value or LO:HI drawn uniformly per image, "
        "before Model_II/III's deflection rescaling by ~0.63"
    ),
    "noise": "noise in units of Model_I's: 0 none, 1 Model_I's, 3 three times as much",
    "lens_light": "true or false, add the lens galaxy's light, a de Vaucouleurs profile",
}


class _BadValue(ValueError):
    pass


def _number(value: object) -> float:
    if isinstance(value, bool):
        raise _BadValue("a number")
    try:
        x = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise _BadValue("a number") from None
    if not math.isfinite(x):
        raise _BadValue("a finite number")
    return x


def _positive(value: object) -> float:
    x = _number(value)
    if x <= 0:
        raise _BadValue("a number > 0")
    return x


def _noise(value: object) -> float:
    x = _number(value)
    if x < 0:
        raise _BadValue("a number >= 0")
    return x


def _image_size(value: object) -> int:
    expected = f"an integer from 8 to {MAX_IMAGE_SIZE}"
    try:
        x = _number(value)
    except _BadValue:
        raise _BadValue(expected) from None
    if x != int(x) or not 8 <= x <= MAX_IMAGE_SIZE:
        raise _BadValue(expected)
    return int(x)


def _einstein_radius(value: object) -> tuple[float, float]:
    if isinstance(value, str):
        parts: list[object] = list(value.split(":"))
    elif isinstance(value, (list, tuple)):
        parts = list(value)
    else:
        parts = [value]
    if len(parts) == 1:
        parts *= 2
    if len(parts) != 2:
        raise _BadValue("a number > 0 or LO:HI")
    lo, hi = (_positive(p) for p in parts)
    if lo > hi:
        raise _BadValue("LO:HI with LO <= HI")
    return lo, hi


_TRUE, _FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")


def _flag(value: object) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE or text in _FALSE:
        return text in _TRUE
    raise _BadValue("true or false")


_PARSERS: dict[str, Callable[[object], Any]] = {
    "psf_fwhm": _positive,
    "pixel_scale": _positive,
    "image_size": _image_size,
    "einstein_radius": _einstein_radius,
    "noise": _noise,
    "lens_light": _flag,
}


def known_keys(described: bool = False) -> str:
    """The keys, comma-separated; ``described``: ``key: what it is; ...`` for ``--help``."""
    if described:
        return "; ".join(f"{k}: {v}" for k, v in KEY_HELP.items())
    return ", ".join(KEY_HELP)


def format_overrides(overrides: Mapping[str, Any]) -> str:
    """``{"psf_fwhm": 0.2, "lens_light": True}`` -> ``psf_fwhm=0.2, lens_light=true``."""
    if not overrides:
        return "none"

    def text(value: Any) -> str:
        if isinstance(value, bool):
            return str(value).lower()
        if isinstance(value, (list, tuple)):
            return ":".join(text(v) for v in value)
        return str(value)

    return ", ".join(f"{k}={text(v)}" for k, v in overrides.items())


def parse_assignments(items: Iterable[str]) -> dict[str, str]:
    """``["psf_fwhm=0.2", "lens_light=true"]`` -> ``{"psf_fwhm": "0.2", "lens_light": "true"}``."""
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise DeepLenseError(
                f"recipe override {item!r} is not KEY=VALUE; known keys: {known_keys()}"
            )
        if key in out:
            raise DeepLenseError(f"recipe key {key!r} is set twice")
        out[key] = value.strip()
    return out


def resolve_recipe(model: str, recipe: Mapping[str, object] | Recipe | None = None) -> Recipe:
    """``model``'s published recipe with ``recipe``'s overrides applied (keys of KEY_HELP).

    Unknown keys and bad values raise a one-line DeepLenseError that lists the known keys.
    """
    # Here, not at the top: the recipe loads NumPy, and `data simulate --help` reads the keys.
    from deeplense_cli.simulate.recipe import Recipe, base_recipe, recipe_of

    if recipe is None or isinstance(recipe, Recipe):
        return recipe_of(model, recipe)
    changes: dict[str, Any] = {}
    for key, value in recipe.items():
        if key not in _PARSERS:
            raise DeepLenseError(f"unknown recipe key {key!r}; known keys: {known_keys()}")
        try:
            changes[key] = _PARSERS[key](value)
        except _BadValue as exc:
            raise DeepLenseError(
                f"bad value {value!r} for recipe key {key}: expected {exc} "
                f"({KEY_HELP[key]}); known keys: {known_keys()}"
            ) from None
    return dataclasses.replace(base_recipe(model), **changes)
