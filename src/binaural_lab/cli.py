"""``blab``: the work outside the DAG (named pipelines, tuning, scoring outside predictions, reports)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import typer

from binaural_lab.config import ParamError, load_yaml, parse
from binaural_lab.paths import atomic_path, project_root, raw_dir, report_dir, store_root, write_json, write_text
from binaural_lab.stage import entry, load_params, section

app = typer.Typer(help="binaural-lab: reproducible binaural audio research.", no_args_is_help=True)
pipeline_app = typer.Typer(help="Named configurations under pipelines/.", no_args_is_help=True)
evaluate_app = typer.Typer(help="Score predictions made outside the pipeline.", no_args_is_help=True)
data_app = typer.Typer(help="Real datasets: download, verify and unpack (data/registry.yaml).", no_args_is_help=True)
app.add_typer(pipeline_app, name="pipeline")
app.add_typer(evaluate_app, name="evaluate")
app.add_typer(data_app, name="data")


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


def _best_file(family: str, model: str) -> Path:
    return store_root() / "tuning" / f"{family}-{model}" / "best_params.yaml"


@app.command()
@entry
def tune(
    family: str = typer.Argument(..., help="model family: depth, binaural or diffusion"),
    model: str = typer.Argument(
        None,
        help="model of the family (unet, mono2binaural, diffbinaural, ...); omitted for diffusion: the "
        "inference-time study of generate_mels (guidance scale, DDIM steps, eta) on the trained model",
    ),
    n_trials: int = typer.Option(None, help="finished trials the study should hold (default tune.n_trials)"),
    storage: str = typer.Option(
        None, help="journal file (one host) or postgresql://user@host:port/db (several hosts); default tune.storage"
    ),
) -> None:
    """Run (or resume) the Optuna study for FAMILY MODEL and export its best parameters."""
    from binaural_lab.family import check_searched_terms_active, direction, get_family, make_objective
    from binaural_lab.tuning import TuneConfig, export_best, run_study

    fam = get_family(family)
    params = load_params()
    cfg = parse(TuneConfig, section(params, "tune"), "tune")
    if storage:
        cfg.storage = storage
    if model is None:
        if not hasattr(fam, "sampling_objective"):
            raise ParamError(f"blab tune {family}: name a model of the family ({fam.registry.names})")
        model = "sampling"
    space = cfg.spaces.get(family, {}).get(model)
    if space is None:
        declared = {f: sorted(m) for f, m in cfg.spaces.items()}
        raise ParamError(f"tune.spaces.{family}.{model}: no search space declared; declared: {declared}")
    if family not in cfg.metric:
        raise ParamError(f"tune.metric.{family}: name the validation metric the {family} studies optimise")
    metric = cfg.metric[family]
    if model == "sampling":  # trained once; each trial only samples
        objective, prune_from, target = fam.sampling_objective(params), 0, "generate_mels"
    else:
        block = section(params, f"{fam.registry.params_key}.{model}")
        p = fam.registry.params(model, block)
        epochs = cfg.epochs or p.train.epochs
        prune_from = check_searched_terms_active(fam.registry, model, block, space, epochs, fam.loss_context(params))
        objective, target = make_objective(fam, params, model, block, cfg, metric), fam.registry.where(model)
    name = f"{family}-{model}"
    study = run_study(
        name,
        family,
        space,
        objective,
        cfg,
        metric,
        direction(metric, fam.higher_is_better),
        n_trials=n_trials,
        prune_from=prune_from,
    )
    best = export_best(study, target, _best_file(family, model))
    states = [t.state.name for t in study.trials]
    # FAIL: a trial that raised, or whose worker died (its parameters were retried as another trial)
    failed = f", {states.count('FAIL')} failed" if "FAIL" in states else ""
    typer.echo(
        f"study {name}: {len(states)} trials ({states.count('COMPLETE')} complete, "
        f"{states.count('PRUNED')} pruned{failed}); best val_{metric} = {best['value']:.4f} "
        f"(trial {best['trial']}): {best['params']}"
    )
    typer.echo(
        f"exported to {_best_file(family, model)}; `blab tune-apply {family} {model}` writes it into params.yaml"
    )


@app.command("tune-apply")
@entry
def tune_apply(family: str, model: str) -> None:
    """Write the study's exported best parameters for FAMILY MODEL into params.yaml (comments kept)."""
    from binaural_lab.tuning import apply_best

    best = apply_best(_best_file(family, model), project_root() / "params.yaml")
    typer.echo(f"params.yaml: {best['target']} <- {best['params']} (val {best['value']:.4f})")


@evaluate_app.command("depth")
@entry
def evaluate_depth(
    pred_dir: Path = typer.Option(..., help="directory of predicted depth maps, one .npy per sample (metres)"),
    gt_dir: Path = typer.Option(..., help="directory of ground-truth depth maps with the same file names"),
    max_depth: float = typer.Option(..., help="maximum depth in metres (Batvision V1 12, V2 30)"),
    depth_kind: str = typer.Option("planar", help="planar (along the optical axis) or ray (along each ray)"),
    json_out: Path = typer.Option(None, "--json", help="also write the metrics to this JSON file"),
) -> None:
    """Score outside depth predictions with the REFERENCE metrics."""
    from binaural_lab import depth
    from binaural_lab.data.simulate.config import DEPTH_KINDS

    if max_depth <= 0:
        raise ParamError(f"--max-depth: expected a positive number of metres, got {max_depth}")
    if depth_kind not in DEPTH_KINDS:
        raise ParamError(f"--depth-kind: {depth_kind!r} is not one of {list(DEPTH_KINDS)}")
    metrics = depth.score_prediction_dir(pred_dir, gt_dir, max_depth)
    report = {
        "convention": depth.convention(depth_kind, max_depth),
        "depth_kind": depth_kind,
        "max_depth": max_depth,
        **metrics,
    }
    if json_out:
        write_json(json_out, report)
    typer.echo(json.dumps(report, indent=2))


def _strict_json(value: Any) -> Any:
    """``value`` with non-finite floats as strings ("inf"): strict JSON has no infinity, and the SNR
    of an exact copy is infinite."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _strict_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_strict_json(v) for v in value]
    return value


@evaluate_app.command("binaural")
@entry
def evaluate_binaural(
    pred_dir: Path = typer.Option(..., help="directory of predicted stereo WAV files (any sample rate)"),
    gt_dir: Path = typer.Option(..., help="directory of ground-truth stereo WAV files with the same names"),
    convention: str = typer.Option(..., help="gao (2.5D Visual Sound, 16 kHz) or diffbinaural (22.05 kHz)"),
    json_out: Path = typer.Option(None, "--json", help="also write the metrics to this JSON file"),
    normalize: bool = typer.Option(
        None, "--normalize/--no-normalize", help="peak normalisation (default: on for gao, off for diffbinaural)"
    ),
) -> None:
    """Score outside binaural predictions with the REFERENCE metrics of one convention."""
    from binaural_lab.metrics.binaural import score_dirs

    report = score_dirs(pred_dir, gt_dir, convention, normalize)
    text = json.dumps(_strict_json(report), indent=2)
    if json_out:
        write_text(json_out, text + "\n")
    typer.echo(text)


def _dataset_spec(name: str) -> Any:
    """Registry entry NAME with the overrides of params.yaml's ``download.NAME`` (when there is a params.yaml)."""
    from binaural_lab.data.download import dataset_spec

    has_params = (project_root() / "params.yaml").is_file()
    return dataset_spec(name, load_params() if has_params else None)


@data_app.command("fetch")
@entry
def data_fetch(
    name: str = typer.Argument(..., help="dataset of the registry: fairplay, batvision-v1, batvision-v2, realbinaural"),
    root: Path = typer.Option(None, help="download folder (default data/raw/NAME)"),
) -> None:
    """Download NAME through its mirrors (resuming partial files), verify the checksums and unpack it."""
    from binaural_lab.data.download import fetch

    typer.echo(f"{name}: ready in {fetch(_dataset_spec(name), root or raw_dir(name))}")


@data_app.command("verify")
@entry
def data_verify(
    name: str = typer.Argument(..., help="dataset of the registry"),
    root: Path = typer.Option(None, help="download folder (default data/raw/NAME)"),
) -> None:
    """Check NAME on disk without downloading: checksums, unpacked archives, expected paths."""
    from binaural_lab.data.download import verify

    for line in verify(_dataset_spec(name), root or raw_dir(name)):
        typer.echo(line)
    typer.echo(f"{name}: ok")


@app.command()
@entry
def compare(family: str = typer.Argument(..., help="model family: depth")) -> None:
    """Regenerate reports/FAMILY/compare.md and .json from the evaluated models."""
    from binaural_lab.family import get_family, write_comparison

    write_comparison(report_dir(family), get_family(family).comparison)
    typer.echo((report_dir(family) / "compare.md").read_text())


if __name__ == "__main__":
    app()
