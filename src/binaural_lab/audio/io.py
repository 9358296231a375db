"""Audio file I/O through soundfile (torchaudio's load/save need TorchCodec)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf

from binaural_lab.config import UserError
from binaural_lab.paths import atomic_path

# libsndfile adds a PEAK chunk with a timestamp to float WAVs, so the same audio written twice would
# differ byte for byte and DVC would see every simulated dataset as changed. This command turns it off.
_SFC_SET_ADD_PEAK_CHUNK = 0x1050


class AudioFileError(UserError, OSError):
    """An audio file is missing, unreadable or not what the caller expected."""


def read_audio(
    path: str | Path, *, expect_sr: int | None = None, expect_channels: int | None = None
) -> tuple[np.ndarray, int]:
    """Read ``path`` as float32 ``[channels, samples]`` and its sample rate.

    Raises :class:`AudioFileError` naming the file when it is missing, corrupt, empty, or has another
    sample rate or channel count than expected.
    """
    path = Path(path)
    if not path.is_file():
        raise AudioFileError(f"{path}: audio file not found")
    try:
        data, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, ValueError) as exc:
        raise AudioFileError(f"{path}: not a readable audio file ({exc})") from exc
    if data.shape[0] == 0:
        raise AudioFileError(f"{path}: audio file holds no samples")
    if expect_sr is not None and sr != expect_sr:
        raise AudioFileError(f"{path}: sample rate {sr} Hz, expected {expect_sr} Hz")
    if expect_channels is not None and data.shape[1] != expect_channels:
        raise AudioFileError(f"{path}: {data.shape[1]} channel(s), expected {expect_channels}")
    if not np.isfinite(data).all():
        raise AudioFileError(f"{path}: audio holds NaN or infinite samples")
    return np.ascontiguousarray(data.T), int(sr)


def write_audio(path: str | Path, audio: np.ndarray, sample_rate: int, subtype: str = "FLOAT") -> None:
    """Write ``[channels, samples]`` (or ``[samples]``) atomically as WAV, byte-identical for equal audio."""
    audio = np.asarray(audio, dtype=np.float32)
    if audio.ndim == 1:
        audio = audio[None]
    if audio.ndim != 2:
        raise ValueError(f"{path}: expected audio of shape [channels, samples], got {audio.shape}")
    if not np.isfinite(audio).all():
        raise ValueError(f"{path}: refusing to write NaN or infinite samples")
    with atomic_path(path) as tmp:
        with sf.SoundFile(str(tmp), "w", int(sample_rate), audio.shape[0], subtype=subtype, format="WAV") as f:
            sf._snd.sf_command(f._file, _SFC_SET_ADD_PEAK_CHUNK, sf._ffi.NULL, 0)  # before any sample
            f.write(audio.T)
