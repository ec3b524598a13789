"""The ``gantui`` command. Commands are thin: parse, call library code, map errors to one line.

torch and Textual are imported inside command bodies so ``gantui --help`` and
``gantui presets`` start fast.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, NoReturn

import typer

from gantui.errors import GantuiError
from gantui.text import safe

app = typer.Typer(
    name="gantui",
    help="A terminal-first GAN trainer and live training monitor. With no command in a "
    "terminal: pick a run under ./runs to watch.",
    no_args_is_help=False,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


NOTIFY_HELP = ("A shell command run when a run finishes, crashes, stops on a non-finite loss "
               "or warns, with GANTUI_RUN, GANTUI_EVENT, GANTUI_KIND, GANTUI_STEP and "
               "GANTUI_MESSAGE set; it never holds up training.")


@app.callback(invoke_without_command=True)
def main(ctx: typer.Context) -> None:
    """A terminal-first GAN trainer and live training monitor."""
    if ctx.invoked_subcommand is not None:
        return
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        typer.echo(ctx.get_help())
        return
    watch(None, Path("runs"))


def fail(message: object, code: int = 1) -> NoReturn:
    """Print ``error: message`` on stderr (made printable) and exit non-zero; an error in the
    user's own model code is preceded by its traceback lines in the user's files."""
    for line in getattr(message, "trace", ()):
        typer.echo(safe(line, 300), err=True)
    typer.echo(f"error: {safe(message, 2000)}", err=True)
    raise typer.Exit(code)


@contextmanager
def one_line(subject: object = "", interrupted: str = "") -> Iterator[None]:
    """Every command's errors as one line and a non-zero exit: a :class:`GantuiError` as it
    says, an ``OSError`` as ``FILE: why`` (``subject`` when the error names no file), Ctrl-C
    as exit 130 (after ``interrupted``, when given)."""
    try:
        yield
    except GantuiError as exc:
        fail(exc)
    except OSError as exc:  # a full disk, a read-only or missing directory...
        fail(f"{safe(exc.filename or subject)}: {exc.strerror or exc}")
    except KeyboardInterrupt:
        if interrupted:
            typer.echo(interrupted, err=True)
        raise typer.Exit(130) from None


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
    from gantui.studies.sweep import load_study, study_names

    studies = study_names()
    if studies:
        typer.echo("\nstudies (gantui sweep --study NAME [--preset P] [--set steps=N]):")
        width = max(len(n) for n in studies)
        for name in studies:
            try:
                found = load_study(name)
                description = f"{found.description} [{found.preset or config.DEFAULT_PRESET}]"
            except GantuiError as exc:
                description = f"(broken: {exc})"
            typer.echo(f"{name:<{width}}  {description}")


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
    runs_dir: Annotated[Path | None, typer.Option(
        help="Where run directories are created (default ./runs).")] = None,
    name: Annotated[str | None, typer.Option(
        help="Run directory name (default: <preset>-<timestamp>).")] = None,
    resume: Annotated[Path | None, typer.Option(
        help="Continue a run directory from its newest valid checkpoint.")] = None,
    no_ui: Annotated[bool, typer.Option(
        "--no-ui", help="Print progress lines instead of the dashboard (automatic when stdout "
        "is not a terminal).")] = False,
    nproc_per_node: Annotated[int, typer.Option(
        "--nproc-per-node", min=1, help="Data-parallel processes on this machine (one per "
        "GPU): starts torchrun and follows the run. Several machines: run torchrun yourself "
        "(see the README).")] = 1,
    notify: Annotated[str | None, typer.Option(
        metavar="COMMAND", help=NOTIFY_HELP + " Same as --set notify=COMMAND.")] = None,
) -> None:
    """Train a GAN, with the live dashboard or headless."""
    from gantui import config
    from gantui.launch import launched_world_size

    overrides = list(sets or [])
    if notify is not None:
        overrides.append(f"notify={notify}")
    if data is not None:
        overrides.append(f"data={data}")
    if resume is not None and (preset is not None or name is not None or runs_dir is not None):
        fail("--preset, --name and --runs-dir do not mix with --resume: a resumed run "
             "keeps its own config and directory")
    if launched_world_size() > 1:  # a rank of a torchrun launch: never a dashboard
        if nproc_per_node > 1:
            fail("--nproc-per-node starts torchrun; under torchrun, leave it out")
        from gantui.launch import rank_main

        rank_main(None if resume is not None else lambda: config.load(preset, overrides),
                  resume=resume, sets=overrides, device=device, runs_dir=runs_dir or Path("runs"),
                  name=name)
    headless = no_ui or not sys.stdout.isatty()
    if nproc_per_node > 1:
        from gantui.launch import launch_train

        with one_line():
            code = launch_train(nproc_per_node, preset=preset, sets=overrides, device=device,
                                runs_dir=runs_dir, name=name, resume=resume,
                                dashboard=not headless)
        raise typer.Exit(code)
    hangup = None
    if not headless:
        from gantui.ui.run import Hangup

        hangup = Hangup()  # from now on a dropped connection cannot kill the run
    on_nonfinite = "stop" if headless else "pause"
    with one_line("run directory"):
        if resume is not None:
            from gantui.session import start

            session = start(None, "", resume=resume, sets=overrides, device=device,
                            on_nonfinite=on_nonfinite)
        else:
            preset_name, cfg = config.load(preset, overrides)  # fails fast, before torch loads
            from gantui.session import start

            session = start(cfg, preset_name, runs_dir=runs_dir or Path("runs"), name=name,
                            device=device, on_nonfinite=on_nonfinite)
    if headless:
        from gantui.headless import run_headless

        raise typer.Exit(run_headless(session))
    from gantui.ui.run import run_dashboard

    raise typer.Exit(run_dashboard(session, hangup))


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def run(
    ctx: typer.Context,
    script: Annotated[Path, typer.Argument(
        help="A Python training script that uses gantui.api; the arguments after it are "
        "its own (put -- first when one is also a gantui option).")],
    no_ui: Annotated[bool, typer.Option(
        "--no-ui", help="Print the script's output instead of the dashboard (automatic when "
        "stdout is not a terminal).")] = False,
    notify: Annotated[str | None, typer.Option(
        metavar="COMMAND", help=NOTIFY_HELP + " Here: for the script's run (gantui.api).")] =
        None,
) -> None:
    """Run your own training script with the dashboard, as train does for presets.

    q offers to stop the script (a checkpoint first) or to leave it training here without
    the dashboard; gantui watch RUN attaches later, gantui ctl RUN steers it.
    """
    from gantui.runner import run_script

    with one_line(script):
        code = run_script(script, list(ctx.args), notify=notify,
                          dashboard=not (no_ui or not sys.stdout.isatty()))
    raise typer.Exit(code)


@app.command()
def runs(
    runs_dir: Annotated[Path, typer.Option(help="Where run directories live.")] = Path("runs"),
) -> None:
    """List runs: preset, state (running, finished, stopped, crashed), step, losses, age."""
    import time

    from gantui.run.lock import is_locked
    from gantui.run.runs import format_table, scan_runs

    if not runs_dir.is_dir():
        fail(f"no runs directory at {runs_dir}")
    found = scan_runs(runs_dir, is_live=is_locked)
    if not found:
        typer.echo(f"no runs in {runs_dir}")
        return
    typer.echo(format_table(found, time.time()))


@app.command()
def watch(
    runs: Annotated[list[Path] | None, typer.Argument(
        help="A run directory, live or finished (none: pick one from a list); several, or a "
        "sweep directory: the compare view.", metavar="RUN", show_default=False)] = None,
    runs_dir: Annotated[Path, typer.Option(
        help="Where the picker looks for runs.")] = Path("runs"),
    web: Annotated[bool, typer.Option(
        "--web", help="Serve this dashboard to a browser on localhost (textual-serve), to you "
        "only: open the URL with ?token= it prints; over SSH: ssh -L PORT:localhost:PORT "
        "HOST first.")] = False,
    port: Annotated[int, typer.Option(help="Port for --web.", min=1, max=65535)] = 8421,
    notify: Annotated[str | None, typer.Option(
        metavar="COMMAND", help=NOTIFY_HELP + " Here: for what happens while you watch.")] =
        None,
) -> None:
    """Open the dashboard on a run started anywhere; q detaches, x stops the run.

    Without RUN, a live list of the runs under --runs-dir: Enter watches one (or the runs
    marked with space, compared), x stops a live one (after asking), q quits. Several runs or a
    sweep directory open the compare view: shared charts, a table, the sample grids.
    """
    from gantui.remote import RemoteController
    from gantui.run.follow import RunFollower
    from gantui.run.lock import is_locked
    from gantui.run.store import RunStore

    paths = list(runs or [])
    if web:
        if not paths:
            fail("--web needs a run: gantui watch RUN --web (several runs or a sweep "
                 "directory: the compare view)")
        if notify:  # every browser tab runs its own gantui watch: the command would repeat
            fail("--notify is not for --web (each browser tab would run the command); give it "
                 "to gantui train or sweep, or to a gantui watch in a terminal")
        _serve_web(paths, port)
        return
    in_browser = "web_driver" in os.environ.get("TEXTUAL_DRIVER", "")  # under textual-serve
    if not paths:
        if not (sys.stdout.isatty() or in_browser):
            fail("the run picker needs a terminal; name a run (gantui watch RUN) or use "
                 "gantui runs")
        from gantui.ui.picker import pick_run

        picked = pick_run(runs_dir)
        if picked is None:
            raise typer.Exit(0)
        paths = picked if isinstance(picked, list) else [picked]
    if len(paths) > 1 or _is_sweep(paths[0]):
        _watch_compare(paths, in_browser, notify)
        return
    run_dir = paths[0]
    with one_line(run_dir):
        RunStore.open(run_dir)
    if not (sys.stdout.isatty() or in_browser):
        fail("gantui watch needs a terminal; use gantui runs or gantui ctl RUN status, or "
             "--web for a browser")
    from gantui.ui import GantuiApp

    # Always a controller: a run that starts (or restarts) while watched can be steered as
    # soon as a process owns it; until then, and after it dies, the keys are hidden.
    controller = RemoteController(run_dir)
    follower = RunFollower(run_dir)
    drain, notifier = follower.drain, None
    if notify:
        from gantui.notify import followed

        drain, notifier = followed(follower.drain, notify, run_dir)
    app = GantuiApp(drain, controller, attached=True, title=f"gantui watch · {run_dir.name}",
                    can_steer=lambda: is_locked(run_dir), history=True)
    from gantui.ui.tty import run_follower

    try:
        run_follower(app)  # a terminal that stalls or vanishes ends it
    finally:
        controller.close()
        if notifier is not None:
            notifier.close()


def _is_sweep(path: Path) -> bool:
    return (path / "sweep.json").is_file() and not (path / "config.toml").exists()


def _watch_compare(paths: list[Path], in_browser: bool, notify: str | None) -> None:
    """``gantui watch`` on several runs or a sweep: the live compare view."""
    from gantui.studies.runset import resolve

    with one_line(paths[0]):
        runset = resolve(paths)
    if not (sys.stdout.isatty() or in_browser):
        fail("the compare view needs a terminal; use gantui compare RUN RUN ... for a printed "
             "comparison")
    from gantui.ui.compare import run_compare

    run_compare(runset, notify=notify)


def _serve_web(paths: list[Path], port: int) -> None:
    """``gantui watch RUN... --web`` in a browser: textual-serve starts ``gantui watch`` per
    browser tab, on 127.0.0.1 only and behind a secret token printed to the owner (reach it
    through an SSH tunnel, never an open port). The URL file goes into the first path: the
    run, the sweep directory, or the first of several runs."""
    import shlex

    from gantui.run.store import RunStore

    if len(paths) > 1 or _is_sweep(paths[0]):
        from gantui.studies.runset import resolve

        with one_line(paths[0]):
            runset = resolve(paths)
        what, title = f"the compare view of {runset.title}", f"gantui compare · {runset.title}"
    else:
        with one_line(paths[0]):
            RunStore.open(paths[0])
        what, title = safe(paths[0].name, 60), f"gantui watch · {safe(paths[0].name, 60)}"
    try:
        from gantui.ui.web import serve_dashboard
    except ImportError:
        fail("--web needs textual-serve: pip install 'gantui[web]'")
    command = shlex.join([sys.executable, "-m", "gantui", "watch",
                          *(str(p.resolve()) for p in paths)])
    try:
        serve_dashboard(command, paths[0], port=port, echo=typer.echo, title=title, what=what)
    except OSError as exc:
        fail(f"cannot serve on 127.0.0.1:{port}: {exc.strerror or exc}")


@app.command()
def sample(
    run_dir: Annotated[Path, typer.Argument(help="A run directory with a checkpoint.")],
    n: Annotated[int, typer.Option(
        "-n", help="Samples in the grid (conditional runs: a row per class).")] = 64,
    interpolate: Annotated[int, typer.Option(
        help="Instead of a grid: rows of this many steps walking alpha*z1 + (1-alpha)*z2.",
        min=0)] = 0,
    rows: Annotated[int, typer.Option(help="Rows of the interpolation.", min=1)] = 8,
    slerp: Annotated[bool, typer.Option(
        "--slerp", help="With --interpolate: walk the great circle between z1 and z2 "
        "(spherical) instead of the straight line.")] = False,
    class_: Annotated[int | None, typer.Option(
        "--class", help="Conditional runs: a grid of this one class (0 to n_classes-1).")] =
        None,
    code: Annotated[int | None, typer.Option(
        "--code", help="InfoGAN runs (info_codes) and clustered runs (clusters): a grid of "
        "this one code value (0 to its count - 1).")] = None,
    seed: Annotated[int, typer.Option(help="Seed for z: the same seed, the same z.")] = 0,
    checkpoint: Annotated[Path | None, typer.Option(
        help="A checkpoint file (default: the run's newest loadable one).")] = None,
    best: Annotated[bool, typer.Option(
        "--best", help="Use checkpoints/best.pt, the best model by the quality metric.")] = False,
    out: Annotated[Path | None, typer.Option(
        help="PNG to write (default: RUN_DIR/samples/sample-...png).")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "cpu",
) -> None:
    """Draw samples from a run's generator: a grid, or latent interpolations."""
    if not 1 <= n <= 1024:
        fail(f"-n must be between 1 and 1024 (got {n})")
    if best and checkpoint is not None:
        fail("--best and --checkpoint name two different checkpoints; pick one")
    if slerp and not interpolate:
        fail("--slerp shapes an interpolation: add --interpolate N")
    if class_ is not None and interpolate:
        fail("--class draws a grid of one class; it does not mix with --interpolate")
    if code is not None and (interpolate or class_ is not None):
        fail("--code draws a grid of one code value; it does not mix with --interpolate or "
             "--class")
    from gantui.session import resolve_device
    from gantui.studies.sampling import write_sample

    with one_line(run_dir):
        path, step, cfg, kind = write_sample(
            run_dir, n=n, interpolate=interpolate, rows=rows, slerp=slerp, class_=class_,
            code=code, seed=seed, checkpoint=checkpoint, best=best, out=out,
            device=resolve_device(device))
    typer.echo(f"wrote {safe(path)} (step {step}, {cfg.arch}, {kind})")


@app.command()
def prepare(
    data_dir: Annotated[Path, typer.Argument(help="A folder of images (searched recursively).")],
    size: Annotated[int, typer.Option(help="Side in pixels, as the run's image_size.")] = 64,
    channels: Annotated[int, typer.Option(help="3 (RGB) or 1 (grey), as the run's "
                                          "channels.")] = 3,
    workers: Annotated[int, typer.Option(help="Decoding processes.", min=0, max=64)] = 2,
) -> None:
    """Decode an image folder once into a memory-mapped cache that training then reads.

    A class-labelled folder (ROOT/<class>/...) keeps its labels for conditional runs.
    Resumable (rerun after a kill), skips unreadable files as training does; the cache lives
    under $GANTUI_CACHE (default ~/.cache/gantui) and is refused once the folder changes.
    """
    if channels not in (1, 3):
        fail(f"--channels must be 1 or 3 (got {channels})")
    if not 4 <= size <= 1024:
        fail(f"--size must be between 4 and 1024 (got {size})")
    from gantui.data.cache import prepare as prepare_folder
    from gantui.perf.progress import progress_reporter

    interrupted = "interrupted: rerun the same command to finish (done files are kept)"
    with (one_line(data_dir, interrupted),
          progress_reporter(f"decoding {data_dir} at {size}px") as report):
        result = prepare_folder(data_dir, size, channels, workers=workers, progress=report)
    resumed = f", resumed at {result.resumed_at:,}" if result.resumed_at else ""
    skipped = f"; {result.unreadable:,} unreadable file(s) skipped" if result.unreadable else ""
    names = result.class_names
    labelled = (f"; labels of {len(names)} classes ({', '.join(names[:6])}"
                f"{', ...' if len(names) > 6 else ''})" if names else "")
    rate = result.decoded / result.seconds if result.seconds > 0 else 0.0
    typer.echo(f"prepared {result.files:,} images ({result.decoded:,} decoded in "
               f"{result.seconds:.1f} s, {rate:,.0f} img/s{resumed}){skipped}{labelled}\n"
               f"cache: {result.path}\ntraining with --data {data_dir} --set image_size={size} "
               f"now reads it")


@app.command()
def bench(
    preset: Annotated[str, typer.Option("--preset", "-p", help="Preset to measure.")] =
        "dcgan-mnist-plain",
    steps: Annotated[int, typer.Option(help="Training steps per measured run.", min=2,
                                       max=10**7)] = 200,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    data: Annotated[str | None, typer.Option(
        help="Data path (an image folder for dcgan-celeba; its prepared cache is used when "
        "there is one).")] = None,
    rounds: Annotated[int, typer.Option(help="Alternating rounds of every mode (the "
                                        "median is reported).", min=1, max=20)] = 3,
    sets: Annotated[list[str] | None, typer.Option(
        "--set", "-s", metavar="KEY=VALUE", help="Override a config key for every run, e.g. "
        "--set amp=true --set compile=true.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object, for scripts.")] =
        False,
    modes: Annotated[str, typer.Option(
        help="Which to measure, a comma list: the ratios need bare, the data's headroom "
        "needs headless.")] = "bare,headless,dashboard",
) -> None:
    """Measure img/s side by side: a bare loop, headless, the dashboard, the data alone.

    One training process at a time (alternating rounds), then the ratios against the bare
    loop, the data pipeline's headroom, and the FLOP/s achieved against the device's peak.
    """
    import json

    from gantui.perf.bench import parse_modes, report, run_bench
    from gantui.procs import Stopped

    say = (lambda line: typer.echo(line, err=True)) if as_json else typer.echo
    with one_line():
        try:
            result = run_bench(preset, steps, device, data, rounds, list(sets or []), say=say,
                               modes=parse_modes(modes))
        except Stopped as exc:
            typer.echo(f"bench stopped ({exc}); the run under way was ended", err=True)
            raise typer.Exit(128 + exc.signum) from None
    typer.echo(json.dumps(result.to_dict()) if as_json else report(result))


@app.command(name="eval")
def eval_(
    run_dir: Annotated[Path, typer.Argument(help="A run directory, live or finished.")],
    checkpoint: Annotated[Path | None, typer.Option(
        help="A checkpoint file (default: the run's newest loadable one).")] = None,
    best: Annotated[bool, typer.Option(
        "--best", help="Score checkpoints/best.pt, the best model kept by the run.")] = False,
    n: Annotated[int | None, typer.Option(
        "-n", help="Generated samples (default: ring 2,500, MNIST 5,000, folders 2,000).")] =
        None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object, for scripts.")] =
        False,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "cpu",
) -> None:
    """Score a checkpoint: ring modes, the data's judge (FD, KID, classes...), FID; for a
    clustered run, also what G draws for each cluster against the cluster's own images."""
    import json

    if best and checkpoint is not None:
        fail("--best and --checkpoint name two different checkpoints; pick one")
    if n is not None and not 10 <= n <= 100_000:
        fail(f"-n must be between 10 and 100,000 (got {n})")
    from gantui.quality import clustered
    from gantui.quality.evaluate import Evaluator
    from gantui.quality.tracker import score_table
    from gantui.session import resolve_device
    from gantui.studies import sampling

    notes: list[str] = []
    log = notes.append if as_json else (lambda m: typer.echo(safe(m), err=True))
    with one_line(run_dir):
        torch_device = resolve_device(device)
        generator, cfg, step = sampling.load_generator(run_dir, checkpoint, torch_device,
                                                       best=best)
        # a cVAE-GAN: its reconstructions are scored too
        encoder = (sampling.load_encoder(run_dir, cfg, checkpoint, best, torch_device)
                   if cfg.encoder else None)
        evaluator = Evaluator(cfg, torch_device, n=n or cfg.eval_samples or None,
                              fid_weights=cfg.fid_weights, log=log)
        score = evaluator.evaluate(generator, step, encoder=encoder)
        reading = None
        if cfg.clusters and getattr(evaluator, "judge", None) is not None:
            # which clusters G draws as what: the judge reads G per code and each cluster
            images, labels = sampling.cluster_split(run_dir, cfg, checkpoint, best)
            reading = clustered.read_clusters(
                evaluator.judge, evaluator.judge_info.n_classes, generator, cfg, images,
                labels, seed=cfg.seed * 1_000_003 + 77)
    source = str(checkpoint) if checkpoint else ("best.pt" if best else "newest checkpoint")
    if as_json:
        extra = {} if reading is None else {"clusters": clustered.as_dict(reading)}
        typer.echo(json.dumps({"run": str(run_dir), "checkpoint": source, "step": step,
                               "primary": score.primary, "values": score.values,
                               "n": evaluator.n, "seconds": round(score.seconds, 3),
                               "notes": notes, **extra}))
        return
    from rich.console import Console

    console = Console(highlight=False)
    console.print(f"{safe(run_dir)} · {source} · step {step} · {evaluator.n:,} samples · "
                  f"{score.seconds:.1f} s", markup=False)
    console.print(score_table(score))
    if reading is not None:
        console.print(f"\nclusters: {reading.per_code} samples per code, read by the judge",
                      markup=False)
        from gantui.data.datasets import classes_of

        names = classes_of(cfg.dataset, cfg.data, False) or ()  # CIFAR-10's, Fashion's
        for line in clustered.lines(reading, judge_accuracy=evaluator.judge_info.accuracy,
                                    names=names):
            console.print(line, markup=False)


@app.command()
def compare(
    run_dirs: Annotated[list[Path], typer.Argument(help="Two or more run directories.")],
    metric: Annotated[str, typer.Option(
        help="loss_d, loss_g, d_real, d_fake, d_fake_g, grad_g, grad_d, img_per_s, or a "
        "quality value: judge_fd, kid, is, classes, cond_acc, modes, hq, fid, rcfd...")] =
        "loss_g",
    smooth: Annotated[float, typer.Option(help="EMA smoothing in [0, 1).", min=0.0,
                                          max=0.999)] = 0.9,
    height: Annotated[int, typer.Option(help="Chart height in lines.", min=6)] = 20,
    png: Annotated[Path | None, typer.Option(
        help="Also draw the chart as a PNG (matplotlib) for a write-up.")] = None,
) -> None:
    """Plot one metric for several runs on one chart, with a summary table."""
    from rich.console import Console
    from rich.text import Text

    from gantui.studies.compare import chart, legend, load_runs, summary

    console = Console(highlight=False)
    with one_line():
        runs = load_runs(run_dirs)
        text = chart(runs, metric, max(40, console.width), height, smoothing=smooth)
    console.print(Text(f"{metric} (EMA {smooth:g})  ") + legend(runs))
    console.print(text)
    console.print(summary(runs))
    if png is not None:
        from gantui.studies.figures import compare_png

        with one_line(png):
            written = compare_png(run_dirs, metric, png, smooth)
        console.print(f"wrote {safe(written)}", markup=False)


@app.command()
def sweep(
    preset: Annotated[str | None, typer.Option(
        "--preset", "-p", help="Preset (default: the study's, else dcgan-mnist).")] = None,
    vary: Annotated[list[str] | None, typer.Option(
        "--vary", "-v", metavar="KEY=V1,V2", help="A key and its values; repeat for a grid "
        "(list-valued keys separate values with ';': g_hidden=128,128;256,256).")] = None,
    study: Annotated[str | None, typer.Option(
        help="A shipped study (see `gantui presets`) or a study .toml file.")] = None,
    seeds: Annotated[int | None, typer.Option(help="Seeds per grid point (seed, seed+1...).")]
        = None,
    parallel: Annotated[int, typer.Option(
        help="Runs at a time; CPU threads are divided between them.", min=1, max=64)] = 1,
    sets: Annotated[list[str] | None, typer.Option(
        "--set", "-s", metavar="KEY=VALUE", help="Fixed overrides for every run.")] = None,
    name: Annotated[str | None, typer.Option(
        help="Sweep directory name (default: <preset>-<varied keys>).")] = None,
    zipped: Annotated[bool, typer.Option(
        "--zip", help="Pair the i-th values of every --vary instead of a full grid.")] = False,
    runs_dir: Annotated[Path, typer.Option(help="Parent of the sweep directory.")] =
        Path("runs"),
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    notify: Annotated[str | None, typer.Option(
        metavar="COMMAND", help=NOTIFY_HELP + " For every run of the sweep.")] = None,
) -> None:
    """Train a grid of runs (varied keys x seeds), resumable, then a table and a figure.

    Each run is an ordinary headless run directory under RUNS_DIR/<name>/. Rerun the same
    command after a kill: finished runs are kept, interrupted ones resume.
    """
    from gantui.studies import sweep as sweep_mod

    with one_line(runs_dir):
        plan = sweep_mod.plan_command(preset, list(vary or []), study, seeds, list(sets or []),
                                      name, runs_dir, zipped)
        runner = sweep_mod.Sweep(plan, parallel=parallel, device=device,
                                 say=lambda line: typer.echo(safe(line)), notify=notify)
        runner.claim()
    typer.echo(f"sweep {plan.name}: {len(plan.runs)} runs, {parallel} at a time "
               f"({runner.threads} CPU thread(s) each) -> {plan.path}")
    if sys.stdout.isatty():
        from rich.console import Console
        from rich.live import Live

        with Live(sweep_mod.progress_table([]), console=Console(), refresh_per_second=2,
                  transient=False) as live:
            runner.say = lambda line: live.console.print(safe(line), markup=False)
            statuses = runner.run(lambda s: live.update(sweep_mod.progress_table(s)))
    else:
        statuses = runner.run()
    md, csv_path, figure = sweep_mod.write_results(plan, statuses)
    typer.echo(md.read_text(encoding="utf-8"))
    typer.echo(f"table: {md} and {csv_path}" + (f"; figure: {figure}" if figure else ""))
    unfinished = [s for s in statuses if s.state not in ("finished", "error")]
    if runner.stopped:
        typer.echo(f"stopped: {len(unfinished)} run(s) unfinished; rerun the same command to "
                   f"continue", err=True)
        raise typer.Exit(130)
    if any(s.state == "failed" for s in statuses):
        fail(f"{sum(s.state == 'failed' for s in statuses)} run(s) failed; see "
             f"{plan.path / 'logs'}")


@app.command()
def report(
    target: Annotated[Path, typer.Argument(help="A run directory or a sweep directory.")],
    out: Annotated[Path | None, typer.Option(
        help="Where to write (default: TARGET/report/).")] = None,
) -> None:
    """Write report.md and a self-contained report.html with PNG figures of a run or sweep.

    A run: curves with every live change marked, the sample grids over time, final and best
    grids, interpolations, the class grid, config and journal. A sweep: all runs on shared
    axes, the table and one final grid per run.
    """
    from gantui.studies.report import report as write_report

    with one_line(target):
        path = write_report(target, out)
    typer.echo(f"wrote {safe(path)} (report.md and the PNGs beside it)")


@app.command()
def export(
    run_dir: Annotated[Path, typer.Argument(help="A run directory, live or finished.")],
    tensorboard: Annotated[Path, typer.Option(
        "--tensorboard", help="TensorBoard log directory; the run goes to DIR/<run name>.")],
) -> None:
    """Write a run's scalars, sample grids, config and journal as TensorBoard event files.

    Open them with `tensorboard --logdir DIR`. Needs the tensorboard extra
    (pip install 'gantui[tensorboard]'); exporting again replaces the earlier export.
    """
    from gantui.studies.export import export_tensorboard

    with one_line(tensorboard):
        result = export_tensorboard(run_dir, tensorboard)
    skipped = f" (skipped {result.skipped} non-finite values)" if result.skipped else ""
    typer.echo(f"wrote {result.scalars:,} scalars, {result.images:,} images and "
               f"{result.texts:,} texts to {safe(result.path)}{skipped}\n"
               f"view: tensorboard --logdir {safe(tensorboard)}")


@app.command()
def ctl(
    run_dir: Annotated[Path, typer.Argument(help="The run directory of a live run.")],
    action: Annotated[str, typer.Argument(
        help="pause, resume, checkpoint, stop, status, or set KEY=VALUE...")],
    assignments: Annotated[list[str] | None, typer.Argument(
        metavar="[KEY=VALUE]...", help="For set: live keys and their new values.")] = None,
) -> None:
    """Send a command to a live run and print its acknowledgement."""
    from gantui import config
    from gantui.remote import CTL_ACTIONS, check_changes, describe_live_keys, request

    if action not in CTL_ACTIONS:
        fail(f"unknown action {action!r}; expected {', '.join(CTL_ACTIONS)}")
    message: dict = {"action": action, "source": "ctl"}
    with one_line(run_dir):
        if action == "set":
            if not assignments:
                keys = describe_live_keys(run_dir)  # the script's own, or the trainer's
                fail("set needs KEY=VALUE pairs, e.g. gantui ctl RUN set "
                     + (f"{keys[0].split()[0]}=VALUE; live keys: {', '.join(keys)}" if keys
                        else "KEY=VALUE; this run's script declares no live values"))
            changes = dict(config.parse_assignment(item) for item in assignments)
            check_changes(run_dir, changes)  # the script's own live values, or the trainer's
            message["changes"] = changes
        elif assignments:
            fail(f"{action} takes no KEY=VALUE arguments")
        ack = request(run_dir, message)
    try:
        line = describe_ack(action, ack)
    except (AttributeError, KeyError, TypeError):
        fail(f"the run at {run_dir} sent a reply this gantui cannot read")
    typer.echo(safe(line))


def describe_ack(action: str, ack: dict) -> str:
    """One human line for a control acknowledgement."""
    step = ack.get("step")
    if ack.get("waiting"):  # a script between two step boundaries: queued, not applied yet
        return str(ack.get("message", f"{action} queued; not applied yet"))
    if action == "status":
        live = ", ".join(f"{k}={v}" for k, v in ack.get("live", {}).items())
        size = ack.get("world_size", 1)
        ranks = f" (rank 0 of {size})" if isinstance(size, int) and size > 1 else ""
        return (f"{ack.get('name')} ({ack.get('preset')}) {ack.get('state')} at step {step}/"
                f"{ack.get('total_steps')} on {ack.get('device')}{ranks}, pid {ack.get('pid')}; "
                f"{live}")
    if action == "set":
        changes = ack.get("changes", [])
        if not changes:
            return f"no change at step {step} (values already set)"
        return "; ".join(f"set {c['key']} {c['old']} -> {c['new']} at step {step}"
                         for c in changes)
    if action in ("checkpoint", "stop") and ack.get("path"):
        verb = "checkpoint written" if action == "checkpoint" else "stopped"
        return f"{verb} at step {step}: {ack['path']}"
    past = {"pause": "paused", "resume": "resumed", "stop": "stopped"}.get(action, action)
    return f"{past} at step {step}"
