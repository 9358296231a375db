"""Audio: soundfile I/O, STFT features, the one mel function, resampling, echo spectrograms."""

from binaural_lab.audio.io import AudioFileError, read_audio, write_audio
from binaural_lab.audio.mel import (
    MEL_LOG_MAX,
    MEL_LOG_MIN,
    MelConfig,
    denormalize_mel,
    mel_spectrogram,
    normalize_mel,
)
from binaural_lab.audio.stft import complex_stft, echo_spectrogram, istft_features, resample, stft_features

__all__ = [
    "MEL_LOG_MAX",
    "MEL_LOG_MIN",
    "AudioFileError",
    "MelConfig",
    "complex_stft",
    "denormalize_mel",
    "echo_spectrogram",
    "istft_features",
    "mel_spectrogram",
    "normalize_mel",
    "read_audio",
    "resample",
    "stft_features",
    "write_audio",
]
