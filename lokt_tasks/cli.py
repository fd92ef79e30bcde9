"""The ``lokt-tasks`` console script: the same tasks, for projects with no tasks.py.

Unlike plain invoke, a command line that does not parse exits with the usage
code (2) rather than 1, so every outcome keeps its own code.
"""

from __future__ import annotations

from invoke import Exit, Program
from invoke.exceptions import ParseError

from . import __version__
from .errors import USAGE
from .tasks import ns


class LoktTasksProgram(Program):
    def parse_core(self, argv):
        try:
            super().parse_core(argv)
        except ParseError as error:
            raise Exit(f"lokt-tasks: error: {error}", code=USAGE) from None

    def parse_tasks(self):
        try:
            super().parse_tasks()
        except ParseError as error:
            raise Exit(f"lokt-tasks: error: {error}", code=USAGE) from None


program = LoktTasksProgram(
    namespace=ns, version=__version__, name="lokt-tasks", binary="lokt-tasks"
)


def main() -> None:
    program.run()


if __name__ == "__main__":
    main()
