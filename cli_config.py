"""`--config FILE|NAME` for train, train-student and generate-labels: a recipe file (or a run's config.json) whose
values become the command's defaults, so click's own order holds: a flag on the command line, then the file,
then the option's default. Each value goes through the option's own type, so a bad value in a file is refused
with the same one line as the flag would be, naming the key and the file instead of the flag."""
from __future__ import annotations

import os

import click

from .pipeline.errors import UserError
from .pipeline.run.recipes import COMMANDS, METHOD_OPTIONS_KEY, load_recipe, rerun_notes, shipped_names

REPEATED_METHOD_OPTION = "extra_options"  # cli.train_student's parameter behind --method-option NAME=VALUE


class RecipeOption(click.Option):
    """Eager, so it is read before every other option; it fills the context's default_map and has no value."""

    def handle_parse_result(self, ctx, opts, args):
        spec = opts.get(self.name)
        if spec is not None and not ctx.resilient_parsing:
            apply_recipe(ctx, str(spec), opts)
        return super().handle_parse_result(ctx, opts, args)


def recipe_option(command):
    """Add --config to a click command (under its @main.command decorator)."""
    return click.option(
        "--config", cls=RecipeOption, is_eager=True, expose_value=False, metavar="FILE|NAME",
        help=f"Options from a TOML recipe, a shipped one by name ({', '.join(shipped_names())}) or a run's "
             "config.json (rerun it: needs --out); flags on the command line override it. A recipe's [COMMAND] "
             "table is that command's alone; its top-level keys go to each command that takes them, but "
             "generate-labels reads batch_size, seed, method, temperature, teacher, mix_alpha and out only from "
             "its own table.")(command)


def accepted_keys(params) -> dict[str, str]:
    """Key -> parameter: each parameter's name (as config.json records it) and its flag with underscores."""
    keys = {}
    for param in params:
        if param.name == REPEATED_METHOD_OPTION:
            keys[METHOD_OPTIONS_KEY] = param.name
            continue
        keys[param.name] = param.name
        for flag in param.opts:
            keys.setdefault(flag.lstrip("-").replace("-", "_"), param.name)
    return keys


def recipe_keys(ctx: click.Context) -> dict[str, dict[str, str]]:
    """Every key each command that takes --config accepts: a recipe's top-level keys go to the commands that take
    them, and a key that none takes is refused."""
    root = ctx.find_root().command
    commands = getattr(root, "commands", {ctx.command.name: ctx.command})
    return {name: accepted_keys(p for p in commands[name].params if p.expose_value and p.name)
            for name in COMMANDS if name in commands}


def apply_recipe(ctx: click.Context, spec: str, given) -> None:
    params = {p.name: p for p in ctx.command.params if p.expose_value and p.name}
    try:
        keys = {**recipe_keys(ctx), ctx.command.name: accepted_keys(params.values())}
        recipe = load_recipe(spec, ctx.command.name, keys, dict(given))
    except UserError as exc:
        raise click.BadParameter(str(exc), ctx=ctx, param_hint="'--config'") from None
    for name, value in recipe.values.items():
        param = params[name]
        if param.multiple and isinstance(value, str):  # teachers = "a.pt": one of them
            recipe.values[name] = value = [value]
        check_value(ctx, param, value, f"'{recipe.keys[name]}' in {recipe.path}")
    ctx.default_map = {**(ctx.default_map or {}), **recipe.values}
    notes = [*recipe.notes, rerun_notes(recipe, dict(given))]
    for note in notes:
        if note and os.environ.get("RANK", "0") == "0":  # once under torchrun
            click.echo(note, err=True)


def check_value(ctx: click.Context, param: click.Parameter, value, where: str) -> None:
    """The value as the option's own type converts it; a failure names the key and the file."""
    problem = shape_problem(param, value)
    if problem:
        raise click.BadParameter(problem, ctx=ctx, param_hint=where)
    try:
        param.type_cast_value(ctx, value)
    except click.BadParameter as exc:
        raise click.BadParameter(exc.message, ctx=ctx, param_hint=where) from None


def shape_problem(param: click.Parameter, value) -> str | None:
    """What the command line cannot get wrong but a file can: a list for a repeated option, true/false for a flag,
    a string for a text option. Numbers are the numeric types' own concern (they refuse booleans and lists)."""
    if param.multiple:
        ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
        return None if ok else f"{value!r} is not a list of strings"
    if getattr(param, "is_flag", False):
        return None if isinstance(value, bool) else f"{value!r} is not true or false"
    if param.type.name in ("integer", "float"):
        return None
    return None if isinstance(value, str) else f"{value!r} is not a string"
