"""``key=value`` strings (the CLI's ``--set``) as typed overrides of a config dataclass."""

from __future__ import annotations

import dataclasses


def parse_int(text: str) -> int:
    """``"2048"``, ``"100_000"`` or ``"1e5"`` as an int; ``ValueError`` otherwise."""
    try:
        return int(text)
    except ValueError:
        number = float(text)
        if not number.is_integer():
            raise ValueError(text) from None
        return int(number)


def parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(text)


def parse_int_tuple(text: str) -> tuple:
    """``"64,64"``, ``"(64, 64)"``, ``"[64,64]"`` or ``"64"`` as a tuple of ints (``""`` → ())."""
    inner = text.strip().strip("()[]").strip()
    if not inner:
        return ()
    return tuple(parse_int(part.strip()) for part in inner.split(",") if part.strip())


def parse_overrides(pairs: list[str] | None, config_cls) -> dict:
    """``["key=value", ...]`` as ``{field: typed value}`` for the dataclass ``config_cls``.

    Keys are field names (``-`` may stand for ``_``). Each value is converted to the type of
    the field's default: bool (``true/false/1/0/yes/no``), int (``100_000``, ``1e5``), float,
    tuple of ints (``64,64``) or str. Range checks are left to the config's own validation.

    Raises:
        ValueError: for a pair without ``=``, an unknown key or an unconvertible value.
    """
    fields = {f.name: f for f in dataclasses.fields(config_cls)}
    overrides: dict = {}
    for pair in pairs or ():
        key, sep, text = pair.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise ValueError(f"--set expects key=value, got {pair!r}")
        if key not in fields:
            raise ValueError(
                f"--set {key}: unknown setting; accepted: {', '.join(sorted(fields))}"
            )
        default = fields[key].default
        kind = type(default) if default is not dataclasses.MISSING else str
        parsers = {bool: parse_bool, int: parse_int, float: float, tuple: parse_int_tuple}
        try:
            overrides[key] = parsers.get(kind, str)(text.strip())
        except ValueError:
            name = {tuple: "comma-separated integers"}.get(kind, kind.__name__)
            raise ValueError(f"--set {key}={text!r}: expected {name}") from None
    return overrides
