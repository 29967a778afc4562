"""Man pages built from the click commands: ``airgap.1`` and one ``airgap-COMMAND.1`` per command, with the
same usage, option help and examples that ``--help`` prints.  ``make man`` writes them into docs/man::

    python -m airgap._cli.manpage docs/man
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import click

from airgap._cli.examples import EXAMPLES
from airgap._cli.main import ALIASES, cli
from airgap.errors import ExitCode

PROG = "airgap"

EXIT_STATUS = {
    ExitCode.OK: "success",
    ExitCode.INTERNAL: "internal error: a bug (rerun with AIRGAP_DEBUG=1 for a traceback and report it)",
    ExitCode.USAGE: "usage: bad arguments or options, an image not found, a wrong PIN",
    ExitCode.FORMAT: "format: not a valid bundle, manifest, key or image archive; bundle incomplete",
    ExitCode.INTEGRITY: "integrity: a part missing, truncated, damaged or a link; a file the manifest does not list",
    ExitCode.TRUST: "trust: no valid signature, too few from trusted keys, expired, rollback",
    ExitCode.ENVIRONMENT: "environment: Docker, a registry or a token unreachable or refusing, no disk space, I/O errors, "
    "a local state file others could change",
    ExitCode.CONFLICT: "conflict: output exists, a tag would move, a resumed pack whose source changed",
    ExitCode.INTERRUPTED: "interrupted (SIGINT, Ctrl-C)",
    ExitCode.TERMINATED: "terminated (SIGTERM)",
}

ENVIRONMENT = {
    "DOCKER_HOST": "the Docker engine (or Podman's service) to pack from and install into",
    "AIRGAP_STATE": "the install state file (rollback marks); default $XDG_STATE_HOME/airgap/installed.json, "
    "else ~/.local/state/airgap/installed.json",
    "AIRGAP_PKCS11_MODULE": "the PKCS#11 library for pkcs11: keys",
    "AIRGAP_REGISTRY_USER, AIRGAP_REGISTRY_PASSWORD": "registry credentials, when docker login has none",
    "REQUESTS_CA_BUNDLE": "a private CA for registries",
    "AIRGAP_DEBUG": "set to 1: an internal error shows its traceback",
}


def escape(text: str) -> str:
    """Text for a roff line: backslashes and hyphens escaped, a leading dot or quote made harmless."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return "\n".join("\\&" + line if line.startswith((".", "'")) else line for line in text.split("\n"))


def _paragraphs(text: str) -> list[str]:
    """A docstring's paragraphs, each joined into one line (roff fills them)."""
    return [" ".join(p.split()) for p in text.split("\n\n") if p.strip()]


def _examples(name: str) -> list[str]:
    lines = []
    for comment, line in EXAMPLES.get(name, ()):
        lines += [".PP", escape(comment[:1].upper() + comment[1:] + ":"), ".nf", ".RS 4", escape(line), ".RE", ".fi"]
    return lines


def _options(command: click.Command, ctx: click.Context) -> list[str]:
    """Each option as --help shows it (click's own help records): the names and metavar, then the help."""
    lines = []
    for param in command.get_params(ctx):
        record = param.get_help_record(ctx)
        if record is None or not record[1].strip():
            continue  # arguments: the synopsis and description name them
        names, help_text = record
        lines += [".TP", f"\\fB{escape(names)}\\fR", escape(" ".join(help_text.split()))]
    return lines


def _header(title: str, summary: str) -> list[str]:
    return [
        f'.TH {escape(title.upper())} 1 "" "{PROG}" "User Commands"',
        ".SH NAME",
        f"{escape(title)} \\- {escape(summary)}",
    ]


def command_page(name: str, command: click.Command) -> str:
    """``airgap-NAME.1``: synopsis, description, options and examples of one command."""
    parent = cli.make_context(PROG, [], resilient_parsing=True)
    ctx = command.make_context(name, [], parent=parent, resilient_parsing=True)
    aliases = [a for a, target in ALIASES.items() if target == name]
    lines = _header(f"{PROG}-{name}", command.get_short_help_str(limit=200).rstrip("."))
    lines += [".SH SYNOPSIS", f"\\fB{PROG} {escape(name)}\\fR {escape(' '.join(command.collect_usage_pieces(ctx)))}"]
    if aliases:
        lines += [".PP", escape(f"Also run as: {', '.join(f'{PROG} {a}' for a in aliases)}.")]
    lines.append(".SH DESCRIPTION")
    for paragraph in _paragraphs(command.help or ""):
        lines += [".PP", escape(paragraph)]
    lines += [".SH OPTIONS", *_options(command, ctx)]
    if name in EXAMPLES:
        lines += [".SH EXAMPLES", *_examples(name)]
    lines += [".SH SEE ALSO", f"\\fB{PROG}\\fR(1)"]
    return "\n".join(lines) + "\n"


def main_page() -> str:
    """``airgap.1``: the overview, global options, every command, exit status, environment and examples."""
    ctx = cli.make_context(PROG, [], resilient_parsing=True)
    lines = _header(PROG, " ".join((cli.help or "").split()).rstrip("."))
    lines += [".SH SYNOPSIS", f"\\fB{PROG}\\fR [\\fIOPTIONS\\fR] \\fICOMMAND\\fR [\\fIARGS\\fR]..."]
    lines += [".SH DESCRIPTION"]
    for paragraph in _paragraphs(cli.help or ""):
        lines += [".PP", escape(paragraph)]
    lines += [".PP", escape("Each command has its own page, airgap-COMMAND(1), and its own --help.")]
    lines += [".SH OPTIONS", *_options(cli, ctx)]
    lines.append(".SH COMMANDS")
    for name in cli.list_commands(ctx):
        command = cli.commands[name]
        lines += [
            ".TP",
            f"\\fB{escape(name)}\\fR",
            escape(command.get_short_help_str(limit=200)),
            f"See \\fB{PROG}\\-{escape(name)}\\fR(1).",
        ]
    lines.append(".SH EXIT STATUS")
    for code, meaning in EXIT_STATUS.items():
        lines += [".TP", f"\\fB{int(code)}\\fR", escape(meaning)]
    lines.append(".SH ENVIRONMENT")
    for var, meaning in ENVIRONMENT.items():
        lines += [".TP", f"\\fB{escape(var)}\\fR", escape(meaning)]
    lines += [".SH EXAMPLES", *_examples(PROG)]
    see = ", ".join(f"\\fB{PROG}\\-{escape(n)}\\fR(1)" for n in cli.list_commands(ctx))
    lines += [".SH SEE ALSO", see]
    return "\n".join(lines) + "\n"


def pages() -> dict[str, str]:
    """Every page by file name."""
    found = {f"{PROG}.1": main_page()}
    for name, command in sorted(cli.commands.items()):
        found[f"{PROG}-{name}.1"] = command_page(name, command)
    return found


def write(directory: Path) -> list[Path]:
    """Write every page into DIRECTORY (made if missing); remove pages of commands that no longer exist."""
    directory.mkdir(parents=True, exist_ok=True)
    wanted = pages()
    for old in directory.glob(f"{PROG}*.1"):
        if old.name not in wanted:
            old.unlink()
    written = []
    for name, text in wanted.items():
        path = directory / name
        path.write_text(text)
        written.append(path)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        print("usage: python -m airgap._cli.manpage DIRECTORY", file=sys.stderr)
        return 2
    written = write(Path(args[0]))
    print(f"{len(written)} man pages in {args[0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
