"""Command-line flags made from a pydantic config model, so an option is declared once.

Each field becomes ``--field-name`` (or the ``flag`` in its ``json_schema_extra``), with the
field's description as help; booleans get ``--x/--no-x``, lists and tuples are repeatable,
``Literal`` types become choices. A flag that is not given sets nothing (``SUPPRESS``), so the
model's defaults, or a config file's values, stay in force: only what the user typed overrides.
Written by hand (about 40 lines): pydantic-settings can parse a command line into a model, but
it wants to own the parser, while litflow's subcommands share one argparse tree whose handlers
import their libraries lazily (the fast ``--help``). Memory: none.
"""

from __future__ import annotations

import argparse
import typing


def add_model_flags(parser: argparse.ArgumentParser, model, *, flag_prefix: str = "", dest_prefix: str = "",
                    skip: tuple[str, ...] = ()) -> dict[str, str]:
    """Add a flag per field of ``model``; returns {argparse dest: field name}."""
    dests = {}
    for name, info in model.model_fields.items():
        if name in skip:
            continue
        extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
        flag = extra.get("flag") or f"--{flag_prefix}{name.replace('_', '-')}"
        dest = dest_prefix + name
        _add(parser, flag, dest, info, extra.get("metavar"))
        dests[dest] = name
    return dests


def given(args: argparse.Namespace, dests: dict[str, str]) -> dict:
    """{field name: value} of the flags the user gave."""
    values = vars(args)
    return {field: values[dest] for dest, field in dests.items() if dest in values}


def _add(parser, flag: str, dest: str, info, metavar: str | None) -> None:
    kind = info.annotation
    options = typing.get_args(kind)
    if type(None) in options:  # X | None
        kind = next(a for a in options if a is not type(None))
    value = None if info.is_required() or info.default_factory is not None else info.default
    shown = "" if value in (None, ()) else f" (default {value!r})"  # a factory's default is in the description
    common = dict(dest=dest, default=argparse.SUPPRESS, help=(info.description or "") + shown)
    origin = typing.get_origin(kind)
    if kind is bool:
        parser.add_argument(flag, action=argparse.BooleanOptionalAction, **common)
    elif origin in (list, tuple):
        item = typing.get_args(kind)[0]
        if typing.get_origin(item) is not None:  # a list of pairs and the like: --set or a file only
            return
        parser.add_argument(flag, action="append", type=item, metavar=metavar or dest.upper(), **common)
    elif origin is typing.Literal:
        parser.add_argument(flag, choices=list(typing.get_args(kind)), **common)
    else:
        parser.add_argument(flag, type=kind, metavar=metavar, **common)


def add_image_fit_flags(parser: argparse.ArgumentParser) -> dict[str, str]:
    """``--image-fit``/``--image-fill``, declared once (training's config) for every command that
    builds an image tower: embed, train and ``dedup flag`` must make the same choice."""
    from training.config import IMAGE_FIT_FIELDS, TrainConfig

    return add_model_flags(parser, TrainConfig, skip=tuple(n for n in TrainConfig.model_fields
                                                           if n not in IMAGE_FIT_FIELDS))


def image_fit(args: argparse.Namespace) -> dict:
    """{"fit": ..., "fill": ...} from those flags, validated as training validates them."""
    from training.config import TrainConfig, parse_fill

    fields = TrainConfig.model_fields
    fit = getattr(args, "image_fit", fields["image_fit"].default)
    fill = parse_fill(getattr(args, "image_fill", fields["image_fill"].default))
    return {"fit": fit, "fill": fill}
