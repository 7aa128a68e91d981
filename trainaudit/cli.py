"""The command line: check, fix, rules, explain, probe (SPEC §2)."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Sequence
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer
from rich.console import Console
from rich.markup import escape

from trainaudit import __version__
from trainaudit.catalogue import CATALOGUE, lookup
from trainaudit.config import Config, ConfigError, load_config, validate_selectors
from trainaudit.diagnostics import Severity
from trainaudit.discover import SourceFile, context_files, discover, display_path
from trainaudit.engine import CheckResult, FileResult, ProjectPhase, check_files
from trainaudit.notebook import is_notebook
from trainaudit.registry import all_options, load_rules

if TYPE_CHECKING:
    from trainaudit.baseline import Baseline
    from trainaudit.fixes.apply import FileChange

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Find, fix and prove the silent bugs of PyTorch training scripts.",
    context_settings={"help_option_names": ["-h", "--help"]},
    # Plain help (click's): option names are never cut, at any width (rich's panels cut
    # `--no-unsafe-fixes` at 80 columns).
    rich_markup_mode=None,
)
out = Console(highlight=False, soft_wrap=True, emoji=False)
err = Console(stderr=True, highlight=False, soft_wrap=True, emoji=False)

EXIT_OK, EXIT_FINDINGS, EXIT_ERROR = 0, 1, 2


class OutputFormat(str, Enum):
    text = "text"
    json = "json"
    github = "github"
    sarif = "sarif"


def _fail(message: str) -> NoReturn:
    err.print(f"[bold red]error:[/] {escape(message)}")
    raise typer.Exit(EXIT_ERROR)


def _split(values: list[str] | None) -> tuple[str, ...] | None:
    if values is None:
        return None
    return tuple(v.strip() for value in values for v in value.split(",") if v.strip())


PathsArg = Annotated[list[str] | None, typer.Argument(
    help="Files or folders to check ('-' reads stdin). Default: the current folder.",
    show_default=False)]
SelectOpt = Annotated[list[str] | None, typer.Option(
    "--select", help="Only these codes or prefixes (e.g. TA1,TA201); replaces the config.")]
ExtendOpt = Annotated[list[str] | None, typer.Option(
    "--extend-select", help="Codes or prefixes to add to the selection.")]
IgnoreOpt = Annotated[list[str] | None, typer.Option(
    "--ignore", help="Codes or prefixes to ignore, in addition to the config.")]
FixableOpt = Annotated[list[str] | None, typer.Option(
    "--fixable", help="Only fix these codes or prefixes (as ruff); replaces the config.")]
UnfixableOpt = Annotated[list[str] | None, typer.Option(
    "--unfixable", help="Never fix these codes or prefixes, in addition to the config.")]
ShowFixesOpt = Annotated[bool, typer.Option(
    "--show-fixes", help="List the findings fixed, per file and code.")]
ConfigOpt = Annotated[Path | None, typer.Option(
    "--config", help="Use this pyproject.toml or trainaudit.toml.", dir_okay=False)]
NoConfigOpt = Annotated[bool, typer.Option("--no-config", help="Ignore every config file.")]
StdinNameOpt = Annotated[str | None, typer.Option(
    "--stdin-filename", help="The path to report for source read from stdin ('-').")]
ExitZeroOpt = Annotated[bool, typer.Option("--exit-zero", help="Exit 0 even with findings.")]
NoCacheOpt = Annotated[bool, typer.Option(
    "--no-cache", help="Neither read nor write .trainaudit_cache/.")]
ForceExcludeOpt = Annotated[bool, typer.Option(
    "--force-exclude", help="Apply `exclude` to files named on the command line too "
                            "(for pre-commit, which names every changed file).")]
UnsafeFixesOpt = Annotated[bool | None, typer.Option(
    "--unsafe-fixes/--no-unsafe-fixes",
    help="Also apply feature fixes (accumulation, autocast, checkpointing, clipping).")]


def _configure(paths: list[str] | None, select: list[str] | None, extend_select: list[str] | None,
               ignore: list[str] | None, config_path: Path | None, no_config: bool,
               fail_on: str | None = None, force_exclude: bool = False
               ) -> tuple[Config, list[str]]:
    targets = paths or ["."]
    start = Path(targets[0]) if targets[0] != "-" else Path.cwd()
    try:
        config = load_config(config_path, start=start if start.exists() else Path.cwd(),
                             rule_options=all_options(), no_config=no_config)
        changes: dict[str, object] = {}
        if (sel := _split(select)) is not None:
            changes["select"] = validate_selectors(sel, "--select")
        if (ext := _split(extend_select)) is not None:
            changes["extend_select"] = config.extend_select + validate_selectors(ext, "--extend-select")
        if (ign := _split(ignore)) is not None:
            changes["ignore"] = config.ignore + validate_selectors(ign, "--ignore")
        if fail_on is not None:
            changes["fail_on"] = Severity.parse(fail_on)
        if force_exclude:
            changes["force_exclude"] = True
        return config.with_overrides(**changes), targets
    except (ConfigError, ValueError) as exc:
        _fail(str(exc))


def _fix_choice(config: Config, fixable: list[str] | None, unfixable: list[str] | None
                ) -> Config:
    """``--fixable`` replaces the config's list, ``--unfixable`` adds to it (as ruff)."""
    try:
        if (chosen := _split(fixable)) is not None:
            config = config.with_overrides(fixable=validate_selectors(chosen, "--fixable"))
        if (never := _split(unfixable)) is not None:
            config = config.with_overrides(
                unfixable=config.unfixable + validate_selectors(never, "--unfixable"))
    except ConfigError as exc:
        _fail(str(exc))
    return config


def _show_fixes(changes: Sequence[FileChange], applied: bool) -> None:
    from trainaudit.report.text import render_fixes

    render_fixes({c.file.display: c.fixed_codes for c in changes}, err, applied=applied)


def _gather(targets: list[str], config: Config, stdin_filename: str | None
            ) -> tuple[list[SourceFile], dict[str, str], list[str]]:
    """The files to check, the stdin overlay, and the paths that do not exist (reported
    at the end with exit 2, as ruff: the other paths are still checked)."""
    if "-" in targets:
        if len(targets) > 1:
            _fail("'-' (stdin) cannot be combined with other paths")
        name = stdin_filename or "stdin.py"
        if is_notebook(name):
            _fail("notebooks are read from their files, not from stdin")
        file = SourceFile(Path(name), display_path(Path(name)), explicit=True)
        return [file], {file.display: sys.stdin.read()}, []
    files, problems = discover([Path(t) for t in targets], config)
    return files, {}, problems


def _exit_code(result: CheckResult, config: Config) -> int:
    if result.errors:
        return EXIT_ERROR
    failing = any(f.severity.rank >= config.fail_on.rank for f in result.findings)
    return EXIT_FINDINGS if failing else EXIT_OK


def _report_errors(result_errors: list[str]) -> None:
    for message in result_errors:
        err.print(f"[bold red]error:[/] {escape(message)}")


# Trees smaller than this finish before a progress bar is worth drawing.
PROGRESS_THRESHOLD = 300


def _load_baseline(path: Path) -> Baseline:
    from trainaudit.baseline import BaselineError, load_baseline

    try:
        return load_baseline(path)
    except BaselineError as exc:
        _fail(str(exc))


def _cache_phases(config: Config, *, cache: bool, overlay: dict[str, str]
                  ) -> tuple[Callable[..., list[FileResult]] | None, ProjectPhase | None]:
    """The cache's phase 1 and phase 2, or (None, None) when it is off or for stdin."""
    if not cache or overlay:
        return None, None
    from trainaudit.cache import ResultCache

    cached = ResultCache(config.root, lazy_summaries=True)
    return cached.analyse, cached.project


def _run_check(files: list[SourceFile], config: Config, overlay: dict[str, str], *,
               cache: bool, progress: bool, context: list[SourceFile]) -> CheckResult:
    """Phase 1 through the cache unless disabled; a progress bar on a terminal for big trees."""
    analyse, project = _cache_phases(config, cache=cache, overlay=overlay)
    if not (progress and err.is_terminal and len(files) + len(context) > PROGRESS_THRESHOLD):
        return check_files(files, config, overlay=overlay, analyse=analyse, project=project,
                           context=context, count_advice=True)
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    with Progress("checking", BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=err, transient=True) as bar:
        task = bar.add_task("check", total=len(files) + len(context))
        return check_files(files, config, overlay=overlay, analyse=analyse, project=project,
                           progress=lambda n: bar.advance(task, n), context=context,
                           count_advice=True)


def _named_files_only(overlay: dict[str, str] | None, targets: list[str]) -> bool:
    """Files named (not folders, not stdin): their project is read beside them."""
    return not overlay and _only_files(targets)


def _only_files(targets: list[str]) -> bool:
    """Whether every path named is a file (or missing): pre-commit's way, not a folder's."""
    return all(not Path(target).is_dir() for target in targets)


def _warn_if_empty(files: list[SourceFile], targets: list[str], missing: list[str]) -> None:
    if not files and not missing:
        where = ", ".join(targets)
        err.print(f"[yellow]warning:[/] no Python files or notebooks found under {escape(where)}")


def _fix_and_write(files: list[SourceFile], config: Config, overlay: dict[str, str], *,
                   cache: bool, quiet: bool, show_fixes: bool = False,
                   context: list[SourceFile] | None = None) -> CheckResult:
    """``check --fix``: write the fixes (stdin: the fixed source to stdout), then return
    what remains, with the fixer's errors among the result's."""
    from trainaudit.fixes.apply import fix_files, write_changes

    analyse, project = _cache_phases(config, cache=cache, overlay=overlay)
    run = fix_files(files, config, unsafe_fixes=config.unsafe_fixes, overlay=overlay,
                    analyse=analyse, project=project, context=context or ())
    written, unwritten = run.changes, list[str]()
    if overlay:
        sys.stdout.write(run.changes[0].output() if run.changes else next(iter(overlay.values())))
    else:
        written, unwritten = write_changes(run.changes)
    if not quiet and written:
        err.print(f"Fixed {len(written)} file{'s' if len(written) != 1 else ''}.")
    if show_fixes:
        _show_fixes(written, applied=True)
    run.remaining.errors = [*run.errors, *unwritten, *run.remaining.errors]
    return run.remaining


@app.command()
def check(
    paths: PathsArg = None,
    select: SelectOpt = None,
    extend_select: ExtendOpt = None,
    ignore: IgnoreOpt = None,
    output_format: Annotated[OutputFormat, typer.Option(
        "--format", help="Output format.")] = OutputFormat.text,
    fail_on: Annotated[str | None, typer.Option(
        "--fail-on", help="Lowest severity that makes the exit code 1: error, warning or info.")] = None,
    config_path: ConfigOpt = None,
    no_config: NoConfigOpt = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only the findings, no summary.")] = False,
    statistics: Annotated[bool, typer.Option("--statistics", help="Count findings per rule.")] = False,
    exit_zero: ExitZeroOpt = False,
    stdin_filename: StdinNameOpt = None,
    no_cache: NoCacheOpt = False,
    baseline: Annotated[Path | None, typer.Option(
        "--baseline", dir_okay=False,
        help="Only report findings not recorded in this baseline file.")] = None,
    write_baseline: Annotated[Path | None, typer.Option(
        "--write-baseline", dir_okay=False,
        help="Record every current finding in this file and exit 0.")] = None,
    apply_fixes: Annotated[bool, typer.Option(
        "--fix", help="Write safe and corrective fixes, then report what remains "
                      "(as `fix --apply`).")] = False,
    unsafe_fixes: UnsafeFixesOpt = None,
    force_exclude: ForceExcludeOpt = False,
    project_context: Annotated[bool, typer.Option(
        "--project-context/--no-project-context",
        help="With files named (as pre-commit does): also read the rest of the project "
             "(the config's folder, else the git work tree), so a cross-file finding "
             "that involves a named file is reported.")] = True,
    fixable: FixableOpt = None,
    unfixable: UnfixableOpt = None,
    show_fixes: ShowFixesOpt = False,
) -> None:
    """Lint training scripts. Exit 0: clean; 1: findings at or above --fail-on; 2: error."""
    config, targets = _configure(paths, select, extend_select, ignore, config_path, no_config,
                                 fail_on, force_exclude)
    config = _fix_choice(config, fixable, unfixable)
    if unsafe_fixes is not None:
        config = config.with_overrides(unsafe_fixes=unsafe_fixes)
    files, overlay, missing = _gather(targets, config, stdin_filename)
    _warn_if_empty(files, targets, missing)
    accepted = _load_baseline(baseline) if baseline is not None and write_baseline is None else None
    context = (context_files(files, config)
               if project_context and _named_files_only(overlay, targets) else [])
    if apply_fixes:
        result = _fix_and_write(files, config, overlay, cache=not no_cache, quiet=quiet,
                                show_fixes=show_fixes, context=context)
    else:
        result = _run_check(files, config, overlay, cache=not no_cache, progress=not quiet,
                            context=context)
    result.errors = [*missing, *result.errors]
    _report_errors(result.errors)
    if write_baseline is not None or accepted is not None:
        from trainaudit.baseline import read_lines_from_disk
        from trainaudit.baseline import write_baseline as record

        lines_of = read_lines_from_disk(overlay)
        if write_baseline is not None:
            record(write_baseline, result.findings, lines_of)
            err.print(f"Recorded {len(result.findings)} finding(s) in {write_baseline}.")
            raise typer.Exit(EXIT_ERROR if result.errors else EXIT_OK)
        assert accepted is not None
        result.findings, known = accepted.split(result.findings, lines_of)
        if known and not quiet:
            err.print(f"{known} finding(s) already in the baseline {baseline} were not reported.")
    # With --fix on stdin, stdout carries the fixed source: the findings go to stderr.
    console = err if apply_fixes and overlay else out
    if output_format is OutputFormat.text:
        from trainaudit.report.text import render_text

        render_text(result, console, quiet=quiet, statistics=statistics,
                    unsafe_fixes=config.unsafe_fixes,
                    overlay={k: v.splitlines() for k, v in overlay.items()})
    else:
        from trainaudit.report import render

        text = render(output_format.value, result)
        if text:
            console.file.write(text + "\n")
        if err.is_terminal and not quiet:  # people watching; pipes and files get data only
            from trainaudit.report.text import advice_line, summary_line

            err.print(summary_line(result), highlight=False, soft_wrap=True)
            if result.advice_not_shown:
                err.print(advice_line(result.advice_not_shown), highlight=False,
                          soft_wrap=True, markup=False)
    code = _exit_code(result, config)
    raise typer.Exit(EXIT_OK if exit_zero and code == EXIT_FINDINGS else code)


@app.command()
def fix(
    paths: PathsArg = None,
    apply: Annotated[bool, typer.Option("--apply", help="Write the fixes (default: show a diff).")] = False,
    diff: Annotated[bool, typer.Option("--diff", help="Show the diff (the default without --apply).")] = False,
    unsafe_fixes: UnsafeFixesOpt = None,
    select: SelectOpt = None,
    extend_select: ExtendOpt = None,
    ignore: IgnoreOpt = None,
    config_path: ConfigOpt = None,
    no_config: NoConfigOpt = False,
    stdin_filename: StdinNameOpt = None,
    quiet: Annotated[bool, typer.Option(
        "--quiet", "-q", help="Only diffs and findings; no notes or counts.")] = False,
    exit_zero: ExitZeroOpt = False,
    no_cache: NoCacheOpt = False,
    force_exclude: ForceExcludeOpt = False,
    fixable: FixableOpt = None,
    unfixable: UnfixableOpt = None,
    show_fixes: ShowFixesOpt = False,
) -> None:
    """Fix findings: show the diff, or write it with --apply (safe and corrective fixes).
    Exit 1 when something would change (or, with --apply, findings remain)."""
    from trainaudit.fixes.apply import fix_files, write_changes

    config, targets = _configure(paths, select, extend_select, ignore, config_path, no_config,
                                 force_exclude=force_exclude)
    config = _fix_choice(config, fixable, unfixable)
    if unsafe_fixes is not None:
        config = config.with_overrides(unsafe_fixes=unsafe_fixes)
    files, overlay, missing = _gather(targets, config, stdin_filename)
    _warn_if_empty(files, targets, missing)
    analyse, project = _cache_phases(config, cache=not no_cache, overlay=overlay)
    run = fix_files(files, config, unsafe_fixes=config.unsafe_fixes, overlay=overlay,
                    analyse=analyse, project=project,
                    context=context_files(files, config) if _named_files_only(overlay, targets) else ())
    run.errors = [*missing, *run.errors]
    _report_errors(run.errors)

    def finish(code: int) -> NoReturn:
        code = EXIT_ERROR if run.errors else code
        raise typer.Exit(EXIT_OK if exit_zero and code == EXIT_FINDINGS else code)

    if overlay and not diff:  # stdin: the fixed source goes to stdout
        sys.stdout.write(run.changes[0].output() if run.changes else next(iter(overlay.values())))
        finish(EXIT_OK)
    if show_fixes and not overlay:
        _show_fixes(run.changes, applied=apply and not diff)
    if diff or not apply:
        for change in run.changes:
            if not quiet:
                for note in change.notes:
                    out.print(f"# {change.file.display}: {note}", style="bold", soft_wrap=True,
                              markup=False)
            sys.stdout.flush()
            sys.stdout.write(change.diff())
            sys.stdout.flush()
    if apply and not overlay:
        written, unwritten = write_changes(run.changes)
        _report_errors(unwritten)
        run.errors += unwritten  # exit 2: a fix that was not written is not a finding
        if not quiet:
            noun = "file" if len(written) == 1 else "files"
            err.print(f"Fixed {len(written)} {noun}.")
        remaining = run.remaining
        if remaining.findings:
            from trainaudit.report.text import render_text

            if not quiet:
                err.print(f"{len(remaining.findings)} finding(s) remain:")
            render_text(remaining, err, quiet=True)
        finish(_exit_code(remaining, config))
    if not run.changes and not quiet:
        err.print("Nothing to fix.")
    finish(EXIT_FINDINGS if run.changes else EXIT_OK)


class RulesFormat(str, Enum):
    text = "text"
    json = "json"


@app.command("rules")
def rules_command(
    prefix: Annotated[str | None, typer.Argument(
        help="Only the rules whose code starts with this (TA2).", show_default=False)] = None,
    output_format: Annotated[RulesFormat, typer.Option("--format", help="Output format.")
                             ] = RulesFormat.text,
) -> None:
    """List the rules: code, name, severity, fix class, what each finds. Rules marked
    (advice) run only when selected."""
    implemented = load_rules()
    chosen = [i for i in CATALOGUE if prefix is None or i.code.startswith(prefix.strip().upper())]
    if not chosen:
        _fail(f"{prefix!r} matches no rule code; `trainaudit rules` lists them")
    if output_format is RulesFormat.json:
        rows = [{"code": i.code, "name": i.name, "severity": i.severity.value,
                 "fix": i.fix.value if i.fix else None, "summary": i.summary,
                 "implemented": i.code in implemented, "advice": i.advice} for i in chosen]
        sys.stdout.write(json.dumps(rows, indent=2) + "\n")
        return
    from trainaudit.report.catalogue import print_rules

    # Advice is marked: it runs only when selected (not in the default selection).
    print_rules([(i.code, i.name + ("" if i.code in implemented else " (planned)"),
                  i.severity.value + (" (advice)" if i.advice else ""),
                  i.fix.value if i.fix else "-", i.summary) for i in chosen], out)


RULE_PAGES = Path(__file__).resolve().parent.parent / "rules"


@app.command()
def explain(code: Annotated[str, typer.Argument(help="A rule code (TA102) or name.")]) -> None:
    """Show one rule's documentation page (its Markdown when piped)."""
    from trainaudit.report.catalogue import print_page

    info = lookup(code)
    if info is None:
        _fail(f"unknown rule {code!r}; `trainaudit rules` lists them")
    page = RULE_PAGES / f"{info.slug}.md"
    if page.is_file():
        print_page(page.read_text(encoding="utf-8"), out)
    else:
        fix = info.fix.value if info.fix else "none"
        print_page(f"# {info.code} {info.name}\n\n{info.summary}.\n\n"
                   f"Severity: {info.severity.value}. Fix: {fix}.\n", out)


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
             options_metavar="[OPTIONS] -- CMD [ARGS]... | diff BEFORE.json AFTER.json")
def probe(
    ctx: typer.Context,
    steps: Annotated[int, typer.Option("--steps", min=1, help="Optimizer steps to run.")] = 5,
    json_path: Annotated[Path | None, typer.Option("--json", help="Write the report as JSON here.")] = None,
) -> None:
    """Run a training command for a few optimizer steps under runtime probes and
    report what really happened (label offset, micro-batches per step, autocast,
    checkpointing, memory, step time). CMD is what you would type:

    \b
      trainaudit probe --steps 5 --json report.json -- python train.py ARGS
      trainaudit probe -- python -m pkg.train ARGS
      trainaudit probe -- torchrun --nproc-per-node 2 train.py ARGS
      trainaudit probe -- accelerate launch train.py ARGS
      trainaudit probe diff before.json after.json   # the before/after table

    Exit 1 with an error or warning finding, 0 without, 2 when the command
    cannot be probed."""
    from trainaudit.probe.command import probe_command

    raise typer.Exit(probe_command(list(ctx.args), steps=steps, json_path=json_path, out=out, err=err))


def _version(value: bool) -> None:
    if value:
        out.print(f"trainaudit {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Show the version.")] = False,
) -> None:
    """Find, fix and prove the silent bugs of PyTorch training scripts."""


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except KeyboardInterrupt:  # pragma: no cover
        err.print("interrupted")
        sys.exit(130)
    except SystemExit as done:
        if done.code is not None and not isinstance(done.code, int):
            raise
        # Everything is written and closed by now; skip the interpreter's teardown,
        # which frees every object one by one (~10% of a warm run on a big tree).
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(done.code or 0)
