"""The ``lokt-tasks`` console script: a program of its own over the same tasks.

It needs no tasks.py and shows only what applies: its own help (``--help``,
``help COMMAND``, ``COMMAND --help``), the flags of flags.FLAGS, and of
invoke's core options only those that do something here. invoke's other
core options are refused by name, with what they are for. Every command
line that does not parse ends in one line, ``lokt-tasks: error: ...``, and
the usage code (2, where invoke exits 1), with a "did you mean" for a
misspelt command or flag and the tasks of shards.toml when the task is
missing. invoke's configuration is read as invoke reads it (system, user,
``invoke.yaml`` beside shards.toml, ``-f FILE``), for the defaults under
``lokt_tasks`` (see flags.configured_defaults).
"""

from __future__ import annotations

import os
import re
from contextlib import contextmanager
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

from invoke import Exit, Program
from invoke.completion.complete import complete, print_completion_script
from invoke.exceptions import ParseError
from invoke.parser import Argument, ParserContext

from . import __version__
from .config import display_path, find_config, load_config
from .errors import USAGE, LoktTasksError
from .flags import ARGUMENTS, FLAGS, columns, flag_spec, long_flag, unknown_option
from .system import reader_gone
from .tasks import ns
from .text import close_match

#: The kinds of file invoke reads its configuration from.
INVOKE_CONFIG_SUFFIXES = ("yaml", "yml", "json", "py")
#: The pseudo-command that shows help: ``lokt-tasks help [COMMAND]``.
HELP = "help"

#: invoke's core options kept, as help shows them (None: not shown, as
#: ``--complete``, which only the completion script calls).
CORE: List[Tuple[Argument, Optional[str]]] = [
    (Argument(names=("config",), help=FLAGS["config"].text), flag_spec("config")),
    (
        Argument(
            names=("invoke-config", "f"),
            help="An invoke configuration file (YAML, JSON or Python), read after the others;"
            " its lokt_tasks key gives defaults (see README).",
        ),
        "-f FILE, --invoke-config=FILE",
    ),
    (
        Argument(names=("help", "h"), optional=True, help="Show this help, or a command's."),
        "-h [COMMAND], --help[=COMMAND]",
    ),
    (
        Argument(names=("version", "V"), kind=bool, default=False, help="Show the version."),
        "-V, --version",
    ),
    (
        Argument(
            names=("print-completion-script",),
            default="",
            help="Print the tab-completion script for a shell: bash, zsh or fish.",
        ),
        "--print-completion-script=SHELL",
    ),
    (Argument(names=("complete",), kind=bool, default=False), None),
]


def _invoke_only() -> Dict[str, str]:
    """invoke's own core options that lokt-tasks does not take, by each of their
    names (``--dry``, ``-R``), with invoke's help for them."""
    kept = {name for argument, _ in CORE for name in argument.names}
    found = {}
    for argument in Program().core_args() + Program().task_args():
        if argument.names[0] in kept:
            continue
        for name in argument.names:
            flag = f"-{name}" if len(name) == 1 else f"--{name}"
            said = (argument.help or "").rstrip(".")
            found[flag] = f"--{argument.names[0]}: {said[:1].lower()}{said[1:]}"
    return found


class LoktTasksProgram(Program):
    def core_args(self) -> List[Argument]:
        return [argument for argument, _ in CORE]

    def task_args(self) -> List[Argument]:
        return []

    def create_config(self) -> None:
        with _config_errors("invoke configuration"):
            super().create_config()

    def parse_core(self, argv: Optional[List[str]]) -> None:
        self.normalize_argv(argv)
        try:
            self.parse_core_args()
        except ParseError as error:
            raise self._refused(error) from None
        if self.args.version.value:
            self.print_version()
            raise Exit
        shell = self.args["print-completion-script"].value
        if shell:
            try:
                print_completion_script(shell=shell, names=self.binary_names)
            except ParseError as error:
                raise _usage(f"--print-completion-script: {error}") from None
            raise Exit
        asked, rest = self.args.help.value, self.core.unparsed
        words = rest[: rest.index("--")] if "--" in rest else rest
        if asked is True and not words:
            self._show_help(None)
        if isinstance(asked, str):
            self._show_help(asked)
        if words and words[0] == HELP:
            if len(words) > 2:
                raise _usage(f"help takes one command, got {' '.join(words[1:])!r}")
            self._show_help(words[1] if len(words) > 1 else None)
        if words and ({"-h", "--help"} & set(words[1:]) or asked is True):
            self._show_help(words[0])

    def _show_help(self, command: Optional[str]) -> None:
        """Print the program's help, or ``command``'s, and exit 0."""
        if command is None or command == HELP:
            self.print_help()
        elif command in ns.task_names:
            self.print_task_help(command)
        else:
            raise _usage(_unknown_command(command, self._commands()))
        raise Exit

    def _commands(self) -> List[str]:
        return [*ns.task_names, HELP]

    def parse_tasks(self) -> None:
        try:
            super().parse_tasks()
        except ParseError as error:
            raise self._refused(error) from None
        for context in self.tasks:
            swallowed = _swallowed_flag(context)
            if swallowed:
                raise _usage(f"{context.name}: {self._unknown_flag(swallowed, context)}")
        shards_toml = self.args.config.value
        for context in self.tasks:
            if shards_toml and "config" in context.args and context.args.config.value is None:
                context.args.config.value = shards_toml

    def parse_cleanup(self) -> None:
        if self.args.complete.value:
            complete(
                names=self.binary_names,
                core=self.core,
                initial_context=self.initial_context,
                collection=self.collection,
                parser=self._make_parser(),
            )
        if not self.tasks:
            self.print_help()
            raise Exit

    def update_config(self, merge: bool = True) -> None:
        """invoke.yaml (.yml, .json, .py) beside shards.toml as the project's
        file, then ``-f FILE`` (or $INVOKE_RUNTIME_CONFIG); no overrides, as
        none of invoke's flags that make them are taken."""
        project = self._shards_toml()
        if project is not None:
            with _config_errors(f"invoke configuration beside {display_path(project)}"):
                self.config.set_project_location(str(project.parent))
                self.config.load_project(merge=False)
        runtime = self.args["invoke-config"].value or os.environ.get("INVOKE_RUNTIME_CONFIG")
        if runtime:
            path = Path(runtime)
            if not path.is_file():
                why = "is not a file" if path.exists() else "no such file"
                raise _usage(f"-f {runtime}: {why} (an invoke configuration file was expected)")
            if path.suffix.lstrip(".") not in INVOKE_CONFIG_SUFFIXES:
                raise _usage(
                    f"-f {runtime}: not an invoke configuration file (.yaml, .yml, .json or .py);"
                    " the path of shards.toml goes to --config"
                )
            with _config_errors(f"-f {runtime}"):
                self.config.set_runtime_path(path)
                self.config.load_runtime(merge=False)
        with _config_errors("invoke configuration"):
            self.config.merge()

    def _shards_toml(self) -> Optional[Path]:
        """The shards.toml the first command reads, if there is one."""
        given = self.args.config.value
        for context in self.tasks:
            if "config" in context.args and context.args.config.value:
                given = context.args.config.value
                break
        if given:
            return Path(given) if Path(given).is_file() else None
        try:
            return find_config(Path.cwd())
        except LoktTasksError:
            return None

    def print_help(self) -> None:
        shown = [(spec, argument.help or "") for argument, spec in CORE if spec]
        commands = [(name, ns[name].__doc__.splitlines()[0]) for name in ns.task_names]
        commands.append((HELP, f"Show a command's help: {self.binary} help COMMAND."))
        lines = [
            f"Usage: {self.binary} [options] COMMAND [TASK] [command options]",
            "",
            "  Split a test suite into shards declared in shards.toml, run each under a lock,",
            "  and merge their records into one verdict.",
            "",
            "Commands:",
            *columns(commands),
            "",
            "Options:",
            *columns(shown),
            "",
            f"'{self.binary} help COMMAND' or '{self.binary} COMMAND --help' lists a command's"
            " options.",
        ]
        print("\n".join(lines))

    def print_task_help(self, name: str) -> None:
        print(ns[name].help_text(self.binary))

    def _refused(self, error: ParseError) -> Exit:
        """invoke's parse error in lokt-tasks' words."""
        message, context = str(error), error.context
        unknown = re.fullmatch(r"No idea what '(.*)' is!", message)
        if unknown:
            word = unknown.group(1)
            swallowed = _swallowed_flag(context) if context is not None else None
            if swallowed and context is not None:
                return _usage(f"{context.name}: {self._unknown_flag(swallowed, context)}")
            if word.startswith("-"):
                named = f"{context.name}: " if context is not None and context.name else ""
                return _usage(named + self._unknown_flag(word, context))
            if context is None or context.name is None:
                return _usage(_unknown_command(word, self._commands()))
            close = close_match(word, self._commands())
            hint = f"; did you mean the command '{close}'?" if close else ""
            usage = f"see '{self.binary} help {context.name}'"
            return _usage(f"{context.name}: unexpected argument '{word}'{hint} ({usage})")
        if re.fullmatch(r"'.*' did not receive required positional arguments: .*", message):
            return _usage(self._missing_task(context))
        needs = re.fullmatch(
            r"Flag <Argument: ([\w-]+).*> needed value and was not given one!", message
        )
        if needs:
            name = needs.group(1)
            what = FLAGS[name].value if name in FLAGS else None
            return _usage(f"{long_flag(name)} needs a value" + (f" ({what})" if what else ""))
        takes = re.fullmatch(r"Flag <Argument: ([\w-]+).*> doesn't take any value!", message)
        if takes:
            return _usage(f"{long_flag(takes.group(1))} takes no value")
        return _usage(message)

    def _unknown_flag(self, word: str, context: Optional[ParserContext]) -> str:
        """Why ``word`` is not an option here, and what was likely meant."""
        name = word.split("=", 1)[0]
        invoke_only = _invoke_only().get(name)
        if invoke_only:
            dry = name in ("--dry", "-R")
            also = f"; '{self.binary} plan TASK' shows what would run" if dry else ""
            return f"{name} is an option of invoke's ({invoke_only}), not of lokt-tasks{also}"
        core = [f"--{argument.names[0]}" for argument, spec in CORE if spec]
        if context is None or context.name is None:
            commands = [n for n in ns.task_names if name in _long_flags(n)]
            if commands:
                return f"{name} is an option of {', '.join(commands)}: write it after the command"
            return unknown_option(name, core)
        return unknown_option(name, _long_flags(context.name) + core)

    def _missing_task(self, context: Optional[ParserContext]) -> str:
        command = context.name if context is not None else "this command"
        given = self.args.config.value
        if context is not None and "config" in context.args and context.args.config.value:
            given = context.args.config.value
        try:
            loaded = load_config(Path(given) if given else find_config(Path.cwd()))
        except LoktTasksError as error:
            return f"{command} needs a task name ({error})"
        names, where = ", ".join(loaded.tasks), display_path(loaded.path)
        return f"{command} needs a task name: one of {names} (the tasks of {where})"


def _long_flags(command: str) -> List[str]:
    return [long_flag(name) for name in ns[command].parameters() if name not in ARGUMENTS]


def _swallowed_flag(context: ParserContext) -> Optional[str]:
    """An unknown flag that invoke handed to a positional argument: invoke
    fills an unfilled positional with the next word, even ``--idd``."""
    for argument in context.positional_args:
        value = argument.value
        if isinstance(value, str) and value.startswith("-"):
            return value
    return None


def _unknown_command(word: str, commands: List[str]) -> str:
    close = close_match(word, commands)
    hint = f"did you mean '{close}'?" if close else "commands: " + ", ".join(commands)
    return f"unknown command '{word}'; {hint}"


def _usage(message: str) -> Exit:
    return Exit(f"lokt-tasks: error: {message}", code=USAGE)


@contextmanager
def _config_errors(where: str) -> Iterator[None]:
    """Turn any error reading invoke's configuration into one line and exit 2."""
    try:
        yield
    except Exit:
        raise
    except Exception as error:
        # NOTE: any exception: a YAML or JSON syntax error, a Python config
        # file that raises, a file whose top level is not a mapping.
        reason = " ".join(str(error).split()) or type(error).__name__
        raise _usage(f"{where}: {reason}") from None


program = LoktTasksProgram(
    namespace=ns, version=__version__, name="lokt-tasks", binary="lokt-tasks"
)


def main() -> None:
    try:
        program.run()
    except BrokenPipeError:  # NOTE: help piped into a reader that stops early
        raise SystemExit(reader_gone()) from None


if __name__ == "__main__":
    main()
