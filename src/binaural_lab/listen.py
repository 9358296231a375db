"""The listening page: hear and see every compared binaural method side by side on a few test clips.

``reports/binaural/listen.html`` shows, for the test clips that the example figures draw
(:func:`binaural_lab.family.example_indices`), the scene's frame, the ground-truth binaural audio
and, for every method of ``reports/binaural/compare.json`` (so the page matches the table), an
audio player, its left / right spectrograms and its ranking metric in each convention. Its
assets (16-bit PCM WAVs, PNGs) lie in ``reports/binaural/listen/`` and are referenced by relative
paths, so the page works opened from disk and as an MLflow artifact.
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
from PIL import Image

from binaural_lab import plots
from binaural_lab.audio.io import read_audio, write_audio
from binaural_lab.config import UserError
from binaural_lab.data.datasets import DatasetConfig
from binaural_lab.data.manifest import load_manifest
from binaural_lab.family import example_indices
from binaural_lab.paths import atomic_path, output_dir, report_dir

SPLIT = "test"  # the split that compare.json scores
ASSETS = "listen"  # the asset folder, next to listen.html
CHANGE = re.compile(r"^(?P<key>\w+?)_vs_(?P<baseline>.+)_pct$")  # compare.json's change against the baseline
STYLE = """body { font-family: sans-serif; margin: 1.5em; }
section { margin-bottom: 2.5em; }
img.frame { width: 256px; }
td { padding: 0.3em 0.8em; vertical-align: middle; }
.caption { font-size: 0.85em; color: #444; }"""


class ListenError(UserError, ValueError):
    """compare.json or the test split cannot make a listening page."""


def compared_methods(comparison: Path) -> tuple[list[str], dict[str, str], dict[str, str]]:
    """The methods of ``compare.json`` in the table's order, a caption per method (its ranking metric
    and change against the baseline in every convention) and the conventions' descriptions."""
    if not comparison.is_file():
        raise FileNotFoundError(f"{comparison}: comparison not found; run compare_binaural first")
    try:
        data = json.loads(comparison.read_text())
        rows, conventions = data["rows"], data.get("conventions", {})
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ListenError(f"{comparison}: not a comparison file ({exc!r}); rerun compare_binaural") from exc
    if not rows:
        raise ListenError(f"{comparison}: no rows; rerun compare_binaural")
    captions: dict[str, list[str]] = {}
    for row in rows:
        parts = captions.setdefault(row["model"], [])
        for name, change in row.items():
            match = CHANGE.match(name)
            if match and match["key"] in row:
                text = f"{row['convention']}: {match['key']} {row[match['key']]:.4f}"
                if change is not None and row["model"] != match["baseline"]:
                    text += f" ({change:+.1f} % vs {match['baseline']})"
                parts.append(text)
    return list(captions), {m: "; ".join(parts) for m, parts in captions.items()}, dict(conventions)


def _method_wavs(methods: Sequence[str], sample_id: str, comparison: Path) -> dict[str, Path]:
    """Every method's WAV of a clip, failing on the first one missing."""
    wavs = {m: output_dir("binaural", m) / SPLIT / f"{sample_id}.wav" for m in methods}
    for method, path in wavs.items():
        if not path.is_file():
            raise FileNotFoundError(
                f"{path}: WAV of method {method!r} (listed in {comparison}) for clip {sample_id} not found; "
                "run its evaluate stage"
            )
    return wavs


def _save_frame(source: Path, target: Path) -> None:
    """The scene's frame as a PNG."""
    try:
        with Image.open(source) as image:
            image.convert("RGB").save(target, format="PNG")
    except (OSError, ValueError) as exc:
        raise ListenError(f"{source}: not a readable image ({exc})") from exc


def _scene_note(row: Mapping[str, Any]) -> str:
    """Where the main source is, when the manifest says it."""
    if "azimuth_deg" not in row or "distance_m" not in row:
        return ""
    return f"main source at azimuth {row['azimuth_deg']:+.0f} deg (positive: left), {row['distance_m']:.1f} m."


def _player_row(label: str, caption: str, wav: str, image: str) -> str:
    """One table row: the label and caption, the audio player, the spectrograms."""
    return (
        f"<tr><td><b>{html.escape(label)}</b><br><span class='caption'>{html.escape(caption)}</span></td>"
        f"<td><audio controls preload='auto' src='{quote(wav)}'></audio></td>"
        f"<td><img src='{quote(image)}' alt='{html.escape(label)}: left and right spectrograms'></td></tr>"
    )


def _write_scene(
    row: Mapping[str, Any],
    data: DatasetConfig,
    wavs: Mapping[str, Path],
    captions: Mapping[str, str],
    out: Path,
) -> str:
    """The assets of one clip (``wavs``: each method's WAV) in ``out/<sample_id>/``; returns its HTML section."""
    sid = str(row["sample_id"])
    signals = {"": read_audio(data.raw / row["binaural_path"], expect_sr=data.sample_rate, expect_channels=2)[0]}
    for m, path in wavs.items():
        signals[m] = read_audio(path, expect_sr=data.sample_rate, expect_channels=2)[0]
    n = min(x.shape[1] for x in signals.values())
    peak = max(float(np.abs(x[:, :n]).max()) for x in signals.values())
    gain = min(1.0, 1.0 / peak) if peak > 0 else 1.0  # one gain per clip keeps the methods' levels comparable
    (out / sid / "methods").mkdir(parents=True)
    _save_frame(data.raw / row["frame_path"], out / sid / "frame.png")
    rows, vmax = [], None
    for m, x in signals.items():  # the ground truth first: its loudest bin sets the clip's colour range
        stem = f"{sid}/methods/{m}" if m else f"{sid}/ground_truth"
        write_audio(out / f"{stem}.wav", gain * x[:, :n], data.sample_rate, subtype="PCM_16")
        vmax = plots.ear_spectrograms(out / f"{stem}.png", x[:, :n], data.sample_rate, f"{sid} {m or 'truth'}", vmax)
        label = m or "ground truth"
        rows.append(_player_row(label, captions.get(m, ""), f"{ASSETS}/{stem}.wav", f"{ASSETS}/{stem}.png"))
    note = _scene_note(row)
    scaled = f" Scaled by {20 * np.log10(gain):.1f} dB to fit 16 bits." if gain < 1 else ""
    return "\n".join(
        [
            f"<section id='{html.escape(sid)}'><h2>{html.escape(sid)}</h2>",
            f"<p>{html.escape(note)}{scaled}</p>",
            f"<img class='frame' src='{quote(f'{ASSETS}/{sid}/frame.png')}' alt='frame of {html.escape(sid)}'>",
            "<table>",
            *rows,
            "</table></section>",
        ]
    )


def write_listening_page(data: DatasetConfig, n_examples: int, reports: Path | None = None) -> tuple[Path, Path]:
    """Write ``<reports>/listen.html`` and its assets ``<reports>/listen/`` for ``n_examples`` test clips.

    ``reports`` defaults to ``reports/binaural``; its ``compare.json`` names the methods, whose WAVs
    are read from ``outputs/binaural/<method>/test/<sample_id>.wav``. The signals of a clip are cut
    to the shortest of them. Page and folder are written atomically: a failure leaves the previous
    ones (or none) in place. Returns the page and the folder.
    """
    reports = reports or report_dir("binaural")
    comparison = reports / "compare.json"
    methods, captions, conventions = compared_methods(comparison)
    manifest_file = data.prepared / "manifest.parquet"
    manifest = load_manifest(manifest_file, columns=["binaural_path", "frame_path"])
    test = manifest[manifest["split"] == SPLIT].reset_index(drop=True)
    if test.empty:
        raise ListenError(f"{manifest_file}: no {SPLIT} clip to listen to")
    scenes = [test.iloc[i].to_dict() for i in example_indices(len(test), n_examples)]
    wavs = [_method_wavs(methods, str(row["sample_id"]), comparison) for row in scenes]  # before drawing anything
    page, assets = reports / "listen.html", reports / ASSETS
    with atomic_path(page) as tmp_page, atomic_path(assets) as tmp_assets:
        sections = [_write_scene(row, data, w, captions, tmp_assets) for row, w in zip(scenes, wavs, strict=True)]
        described = "".join(f"<li><b>{html.escape(k)}</b>: {html.escape(v)}</li>" for k, v in conventions.items())
        head = (
            f"<p>{len(scenes)} of the {len(test)} {SPLIT} clips of {html.escape(data.name)}: the frame, the "
            f"ground truth and every method of compare.json ({len(methods)}), as 16-bit WAVs at "
            f"{data.sample_rate} Hz. Spectrograms: log magnitude of the left and right ears, in one colour "
            "range per clip set by its ground truth.</p>"
        )
        tmp_page.write_text(
            "\n".join(
                [
                    "<!doctype html>",
                    "<html lang='en'><head><meta charset='utf-8'><title>Binaural generation: listening page</title>",
                    f"<style>{STYLE}</style></head><body>",
                    "<h1>Binaural generation: listening page</h1>",
                    head,
                    f"<ul>{described}</ul>",
                    *sections,
                    "</body></html>",
                    "",
                ]
            )
        )
    return page, assets
