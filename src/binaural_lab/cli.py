"""``blab``: the work outside the DAG (named pipelines, tuning, scoring outside predictions, reports)."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from binaural_lab.config import ParamError, load_yaml, parse
from binaural_lab.paths import atomic_path, features_dir, project_root, report_dir, store_root, write_json
from binaural_lab.stage import entry, load_params, section

app = typer.Typer(help="binaural-lab: reproducible binaural audio research.", no_args_is_help=True)
pipeline_app = typer.Typer(help="Named configurations under pipelines/.", no_args_is_help=True)
evaluate_app = typer.Typer(help="Score predictions made outside the pipeline.", no_args_is_help=True)
compare_app = typer.Typer(help="Regenerate comparison reports from the stage metrics.", no_args_is_help=True)
app.add_typer(pipeline_app, name="pipeline")
app.add_typer(evaluate_app, name="evaluate")
app.add_typer(compare_app, name="compare")


def _pipelines() -> dict[str, Path]:
    return {p.stem: p for p in sorted((project_root() / "pipelines").glob("*.yaml"))}


@pipeline_app.command("list")
def pipeline_list() -> None:
    """List the named pipelines (the active params.yaml is a copy of one of them)."""
    active = (project_root() / "params.yaml").read_text() if (project_root() / "params.yaml").is_file() else ""
    for name, path in _pipelines().items():
        mark = "*" if path.read_text() == active else " "
        typer.echo(f"{mark} {name}")


@pipeline_app.command("use")
@entry
def pipeline_use(name: str) -> None:
    """Make pipelines/NAME.yaml the active params.yaml, so `dvc repro` reruns what changed."""
    pipelines = _pipelines()
    if name not in pipelines:
        raise ParamError(f"pipeline {name!r} not found; available: {sorted(pipelines)}")
    load_yaml(pipelines[name])  # refuse to activate a file that is not valid YAML
    with atomic_path(project_root() / "params.yaml") as tmp:
        tmp.write_text(pipelines[name].read_text())
    typer.echo(f"params.yaml <- pipelines/{name}.yaml; run `dvc repro` (or `dvc status` to see what changed)")


def _tune_setup(model: str):
    from binaural_lab.tuning import TuneConfig

    params = load_params()
    cfg = parse(TuneConfig, section(params, "tune"), "tune")
    if model not in cfg.spaces:
        raise ParamError(f"tune.spaces: no search space for {model!r}; declared: {sorted(cfg.spaces)}")
    return params, cfg, cfg.spaces[model]


def _best_file(model: str) -> Path:
    return store_root() / "tuning" / f"depth-{model}" / "best_params.yaml"


@app.command()
@entry
def tune(
    model: str = typer.Argument(..., help="depth model: unet, base_residual or binaural_attention"),
    n_trials: int = typer.Option(None, help="finished trials the study should hold (default tune.n_trials)"),
    storage: str = typer.Option(None, help="journal file or database URL (default tune.storage)"),
) -> None:
    """Run (or resume) the Optuna study for MODEL and export its best parameters."""
    from binaural_lab import depth
    from binaural_lab.tuning import export_best, run_study

    params, cfg, space = _tune_setup(model)
    if storage:
        cfg.storage = storage
    block = section(params, f"depth_models.{model}")
    max_depth = float(section(params, "synthesize_echoes.max_depth_m"))
    objective = depth.make_objective(model, block, features_dir("echoes"), max_depth, cfg)
    study = run_study(f"depth-{model}", "depth", space, objective, cfg, n_trials=n_trials)
    best = export_best(study, f"depth_models.{model}", _best_file(model))
    states = [t.state.name for t in study.trials]
    typer.echo(
        f"study depth-{model}: {len(states)} trials ({states.count('COMPLETE')} complete, "
        f"{states.count('PRUNED')} pruned); best val_{cfg.metric} = {best['value']:.4f} "
        f"(trial {best['trial']}): {best['params']}"
    )
    typer.echo(f"exported to {_best_file(model)}; `blab tune-apply {model}` writes it into params.yaml")


@app.command("tune-apply")
@entry
def tune_apply(model: str) -> None:
    """Write the study's exported best parameters for MODEL into params.yaml (comments kept)."""
    from binaural_lab.tuning import apply_best

    best = apply_best(_best_file(model), project_root() / "params.yaml")
    typer.echo(f"params.yaml: {best['target']} <- {best['params']} (val {best['value']:.4f})")


@evaluate_app.command("depth")
@entry
def evaluate_depth(
    pred_dir: Path = typer.Option(..., help="directory of predicted depth maps, one .npy per sample (metres)"),
    gt_dir: Path = typer.Option(..., help="directory of ground-truth depth maps with the same file names"),
    max_depth: float = typer.Option(..., help="maximum depth in metres (Batvision V1 12, V2 30)"),
    json_out: Path = typer.Option(None, "--json", help="also write the metrics to this JSON file"),
) -> None:
    """Score outside depth predictions with the REFERENCE metrics."""
    from binaural_lab import depth

    if max_depth <= 0:
        raise ParamError(f"--max-depth: expected a positive number of metres, got {max_depth}")
    metrics = depth.score_prediction_dir(pred_dir, gt_dir, max_depth)
    report = {"convention": depth.METRIC_CONVENTION, "max_depth": max_depth, **metrics}
    if json_out:
        write_json(json_out, report)
    typer.echo(json.dumps(report, indent=2))


@compare_app.command("depth")
@entry
def compare_depth() -> None:
    """Regenerate reports/depth/compare.md and .json from the evaluated models."""
    from binaural_lab import depth

    depth.write_comparison(report_dir("depth"))
    typer.echo((report_dir("depth") / "compare.md").read_text())


if __name__ == "__main__":
    app()
