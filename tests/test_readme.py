"""The README as a newcomer reads it: short, and every `labelopt` command it shows exists."""
import re
import shlex
from pathlib import Path

import click
from click.testing import CliRunner

from labelopt.cli import main

README = Path(__file__).resolve().parent.parent / "README.md"
MAX_LINES = 260
WORD = re.compile(r"^[a-z][a-z0-9-]*$")  # a command's name; paths, options and placeholders are not
FENCE = re.compile(r"^\s*(```|~~~)")
INLINE = re.compile(r"`([^`\n]+)`")


def code_block_lines(text: str) -> list[str]:
    """The lines inside fenced code blocks, with backslash continuations joined into one line."""
    lines, inside, pending = [], False, ""
    for line in text.splitlines():
        if FENCE.match(line):
            inside, pending = not inside, ""
            continue
        if not inside:
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        lines.append(pending + line)
        pending = ""
    return lines


def labelopt_words(line: str) -> list[str] | None:
    """The words after the `labelopt` program in a shell line, or None when the line does not run labelopt.

    The program is `labelopt` (or a path ending in /labelopt) at the start of the line, after `-m` (python -m,
    torchrun -m) or after torchrun's `--no-python`; `srun torchrun ...` and `python -m labelopt ...` count too.
    """
    line = re.sub(r"(^|\s)#.*$", "", line).strip()
    try:
        tokens = shlex.split(line)
    except ValueError:
        tokens = line.split()
    for i, token in enumerate(tokens):
        if token != "labelopt" and not token.endswith("/labelopt"):
            continue
        if i == 0 or tokens[i - 1] in ("-m", "--no-python"):
            return tokens[i + 1:]
    return None


def command_words(words: list[str]) -> tuple[str, ...]:
    """The leading words that can name a command (at most two: `labels verify`); the rest are arguments."""
    path = []
    for word in words[:2]:
        if not WORD.match(word):
            break
        path.append(word)
    return tuple(path)


def readme_commands(text: str) -> dict[tuple[str, ...], str]:
    """{command words: the first README line that shows them}, from code blocks and inline code spans."""
    found = {}
    candidates = code_block_lines(text)
    candidates += [span for span in INLINE.findall(text) if span.startswith("labelopt ")]
    for line in candidates:
        words = labelopt_words(line)
        if words is None:
            continue
        found.setdefault(command_words(words), line.strip())
    return found


def resolve(words: tuple[str, ...]) -> tuple[tuple[str, ...], str | None]:
    """(the command path the words name, the first word that names no command, or None).

    A word after a command that is not a group is that command's argument (`labelopt evaluate run`), so the path
    stops there."""
    command, path = main, []
    for word in words:
        if not isinstance(command, click.Group):
            break
        if word not in command.commands:
            return tuple(path), word
        command = command.commands[word]
        path.append(word)
    return tuple(path), None


def test_readme_parser_reads_plain_torchrun_and_python_m_lines():
    text = "\n".join([
        "```bash",
        "labelopt labels verify store.h5 --data data/x   # a comment with labelopt frobnicate",
        "torchrun --nnodes 2 --node-rank 0 \\",
        "  --no-python labelopt generate-labels --data d --out s.h5",
        "srun torchrun --nproc-per-node 8 -m labelopt train-student --data d",
        "python -m labelopt evaluate run --data d",
        ".venv/bin/labelopt models",
        "pip install -e '.[dev]'",
        "```",
        "Prose with `labelopt methods` inline, and labelopt train outside code.",
    ])
    assert set(readme_commands(text)) == {("labels", "verify"), ("generate-labels",), ("train-student",),
                                          ("evaluate", "run"), ("models",), ("methods",)}
    assert resolve(("evaluate", "run")) == (("evaluate",), None)
    assert resolve(("labels", "frobnicate")) == (("labels",), "frobnicate")


def test_readme_is_short():
    lines = len(README.read_text().splitlines())
    assert lines <= MAX_LINES, f"README.md has {lines} lines; keep it under {MAX_LINES} (details go to docs/)"


def test_every_command_the_readme_shows_exists():
    shown = readme_commands(README.read_text())
    assert len(shown) >= 5, f"the README parser found too few labelopt commands: {sorted(shown)}"
    missing = []
    paths = {}
    for words, line in sorted(shown.items()):
        path, unknown = resolve(words)
        if unknown is not None:
            missing.append(f"labelopt {' '.join(path + (unknown,))} (README: {line})")
        else:
            paths.setdefault(path, line)
    assert not missing, "the README shows commands the CLI does not have:\n" + "\n".join(missing)
    # One test, not one per command (each --help is instant: tests/test_cli_help.py).
    runner = CliRunner()
    for path, line in sorted(paths.items()):
        result = runner.invoke(main, [*path, "--help"])
        assert result.exit_code == 0, (f"`labelopt {' '.join(path)} --help` exited {result.exit_code} "
                                       f"(README: {line}):\n{result.output}")


def test_readme_shows_every_command_the_cli_has():
    shown = {resolve(words)[0] for words in readme_commands(README.read_text())}
    defined = set()
    for name, command in main.commands.items():
        defined.add((name,))
        if isinstance(command, click.Group):
            defined |= {(name, sub) for sub in command.commands}
    absent = sorted(" ".join(path) for path in defined - shown)
    assert not absent, "commands the README never shows as `labelopt ...`: " + ", ".join(absent)
