"""Every ``lst-fast`` command line of the README and the docs is accepted by the real command-line parser, so that the
commands a reader copies cannot drift from the options (parsing only; nothing runs). The data folders the README
names do not exist here: each is checked to be taken as a folder, and a temporary folder of the same shape to be
read as the kind the README means."""

import argparse
import os
import re
import shlex
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lst_fast import cli, data
from lst_fast.sweep.placement import parse_shard

ROOT = Path(__file__).resolve().parent.parent
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]  # where users copy commands from
LAUNCHERS = ("lst-fast", ".venv/bin/lst-fast")
SHELL_ENVIRONMENT = {"SLURM_ARRAY_TASK_ID": "3"}  # what Slurm sets for task 3 of an array, before its shell expands


def _code_blocks(text: str) -> list[str]:
    return re.findall(r"^```[a-z]*\n(.*?)^```", text, flags=re.S | re.M)


def _shell_commands(block: str) -> list[list[str]]:
    """The simple commands of a block: continuation lines joined, comments dropped, split at && and ;."""
    commands = []
    for line in block.replace("\\\n", " ").splitlines():
        words, command = shlex.split(line, comments=True), []
        for word in words + ["&&"]:
            if word in ("&&", ";", "||"):
                commands += [command] if command else []
                command = []
            else:
                command.append(word)
    return commands


def _cli_argv(words: list[str]) -> list[str] | None:
    """The arguments the lst-fast parser gets from a command, through torchrun and sbatch --wrap; None if it is
    not an lst-fast command."""
    if words[0] in LAUNCHERS:
        return words[1:]
    if words[0] == "torchrun":
        for k, word in enumerate(words):
            if word == "-m" and words[k + 1] == "lst_fast.cli":
                return words[k + 2 :]
            if word in LAUNCHERS:  # torchrun --no-python lst-fast ...
                return words[k + 1 :]
        raise AssertionError(f"a torchrun line that runs no lst_fast command: {shlex.join(words)}")
    if words[0] == "sbatch":
        wrapped = next((words[k + 1] for k, word in enumerate(words) if word == "--wrap"), None)
        assert wrapped is not None, f"an sbatch line without --wrap: {shlex.join(words)}"
        expanded = re.sub(r"\$(\w+)", lambda m: SHELL_ENVIRONMENT[m.group(1)], wrapped)
        (inner,) = _shell_commands(expanded)
        return _cli_argv(inner)
    return None


def _readme_command_lines() -> list[tuple[str, list[str]]]:
    found = []
    for block in (b for doc in DOCUMENTS for b in _code_blocks(doc.read_text())):
        for words in _shell_commands(block):
            argv = _cli_argv(words)
            if argv is not None:
                found.append((words[0], argv))
    return found


COMMANDS = _readme_command_lines()


def test_the_readme_commands_are_found():
    """The extraction itself: every form the README uses is there (so an empty list cannot pass the test below)."""
    launchers = {launcher for launcher, _ in COMMANDS}
    assert {"lst-fast", ".venv/bin/lst-fast", "torchrun", "sbatch"} <= launchers
    subcommands = {argv[0] for _, argv in COMMANDS}
    assert {"demo", "sweep", "tables", "info", "plot"} <= subcommands
    assert len(COMMANDS) >= 8


def _parse(argv: list[str]) -> argparse.Namespace:
    try:
        return cli.build_parser().parse_args(argv)
    except SystemExit:
        pytest.fail(f"the README's command 'lst-fast {shlex.join(argv)}' is refused by the parser")


def _same_shape(path: str, root: Path, layout: str) -> Path:
    """A folder at ``root`` + ``path`` holding ImageNet validation images in ``layout``."""
    folder = root / path.lstrip("/")
    rng = np.random.default_rng(0)
    files = {"class folders": ["n01443537/a.JPEG", "n15075141/b.JPEG"],
             "flat": ["ILSVRC2012_val_00000001.JPEG", "ILSVRC2012_val_00000002.JPEG"]}[layout]
    for name in files:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(folder / name)
    return folder


@pytest.mark.parametrize("launcher, argv", COMMANDS, ids=[shlex.join(a)[:60] for _, a in COMMANDS])
def test_readme_command_is_accepted(launcher, argv, tmp_path):
    args = _parse(argv)
    if args.command != "sweep":
        return
    if args.shard is not None:
        parse_shard(args.shard)
    spec_text = args.data
    if spec_text.partition(":")[0] not in data.DATA_KINDS and not os.path.isdir(spec_text):
        # not here: it must be taken as a folder (not refused as an unknown kind), and one of the same shape
        # must be read as ImageNet, with every option of the command valid for it
        with pytest.raises(FileNotFoundError, match=f"data folder {spec_text!r} does not exist"):
            data.parse_data_spec(spec_text)
        for layout in ("class folders", "flat"):
            folder = _same_shape(spec_text, tmp_path / layout.replace(" ", "_"), layout)
            assert data.parse_data_spec(str(folder)).kind == "imagenet", layout
            args.data = str(folder)
            cli.sweep_config(args).checked()
    else:
        cli.sweep_config(args).checked()


def test_inline_commands_name_real_options():
    """Inline mentions such as `lst-fast sweep --schedule adaptive` name a command and options that exist."""
    parser = cli.build_parser()
    (commands,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    spans = [s for doc in DOCUMENTS for s in re.findall(r"`((?:\.venv/bin/)?lst-fast[^`]*)`", doc.read_text())]
    assert len(spans) >= 5
    for span in spans:
        words = shlex.split(span)[1:]
        if words[0].startswith("-"):
            assert words[0] in parser._option_string_actions, span
            continue
        assert words[0] in commands.choices, span
        options = commands.choices[words[0]]._option_string_actions
        for word in words[1:]:
            assert not word.startswith("--") or word in options, f"{span}: {word} is not an option of {words[0]}"
