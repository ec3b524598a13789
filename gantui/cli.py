"""The ``gantui`` command. Commands are thin: parse, call library code, map errors to one line.

torch and Textual are imported inside command bodies so ``gantui --help`` and
``gantui presets`` start fast.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, NoReturn

import typer

from gantui.errors import GantuiError

app = typer.Typer(
    name="gantui",
    help="A terminal-first GAN trainer and live training monitor.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def fail(message: object, code: int = 1) -> NoReturn:
    """Print ``error: message`` on stderr and exit non-zero."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


@app.command()
def presets() -> None:
    """List the shipped presets with a one-line description."""
    from gantui import config

    names = config.preset_names()
    width = max(len(n) for n in names)
    for name in names:
        try:
            _, cfg = config.load(name)
            description = cfg.description
        except GantuiError as exc:
            description = f"(broken: {exc})"
        default = "  [default]" if name == config.DEFAULT_PRESET else ""
        typer.echo(f"{name:<{width}}  {description}{default}")


@app.command()
def train(
    preset: Annotated[str | None, typer.Option(
        "--preset", "-p", help="Preset name (see `gantui presets`) or path to a TOML file. "
        "Default: dcgan-mnist.")] = None,
    sets: Annotated[list[str] | None, typer.Option(
        "--set", "-s", metavar="KEY=VALUE",
        help="Override a config key; repeatable, e.g. --set lr_d=1e-4 --set steps=5000.")] = None,
    data: Annotated[str | None, typer.Option(
        help="Data path: a torchvision MNIST root or a folder of images (CelebA).")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    runs_dir: Annotated[Path, typer.Option(help="Where run directories are created.")] = Path(
        "runs"),
    name: Annotated[str | None, typer.Option(
        help="Run directory name (default: <preset>-<timestamp>).")] = None,
    resume: Annotated[Path | None, typer.Option(
        help="Continue a run directory from its newest valid checkpoint.")] = None,
    no_ui: Annotated[bool, typer.Option(
        "--no-ui", help="Print progress lines instead of the dashboard (automatic when stdout "
        "is not a terminal).")] = False,
) -> None:
    """Train a GAN, with the live dashboard or headless."""
    from gantui import config

    overrides = list(sets or [])
    if data is not None:
        overrides.append(f"data={data}")
    headless = no_ui or not sys.stdout.isatty()
    try:
        if resume is not None:
            if preset is not None:
                fail("--preset and --resume do not mix: a resumed run keeps its own config")
            from gantui.session import start

            session = start(None, "", resume=resume, sets=overrides, device=device,
                            on_nonfinite="stop" if headless else "pause")
        else:
            preset_name, cfg = config.load(preset, overrides)  # fails fast, before torch loads
            from gantui.session import start

            session = start(cfg, preset_name, runs_dir=runs_dir, name=name, device=device,
                            on_nonfinite="stop" if headless else "pause")
    except GantuiError as exc:
        fail(exc)
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
    if headless:
        from gantui.headless import run_headless

        raise typer.Exit(run_headless(session))
    from gantui.ui.run import run_dashboard

    raise typer.Exit(run_dashboard(session))


def main() -> None:  # pragma: no cover - console entry point alias
    app(prog_name="gantui")
