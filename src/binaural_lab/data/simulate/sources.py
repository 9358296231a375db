"""Source signals with distinct timbres, one generator per class, random parameters per call.

Every generator takes ``(rng, sample_rate, n_samples)`` and returns a float64 signal with unit RMS.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy.signal import butter, lfilter, sosfilt

SignalFn = Callable[[np.random.Generator, int, int], np.ndarray]

# A major pentatonic scale in semitones: pleasant random melodies.
PENTATONIC = np.array([0, 2, 4, 7, 9, 12, 14, 16])

# Formant frequencies F1..F4 (Hz) of five vowels (adult male averages; F4 fixed) and their bandwidths.
VOWELS = np.array(
    [
        [730, 1090, 2440, 3400],
        [530, 1840, 2480, 3400],
        [270, 2290, 3010, 3400],
        [570, 840, 2410, 3400],
        [300, 870, 2240, 3400],
    ],
    dtype=float,
)
FORMANT_BANDWIDTHS = np.array([80.0, 100.0, 120.0, 200.0])


def _unit_rms(x: np.ndarray) -> np.ndarray:
    return x / max(float(np.sqrt(np.mean(x**2))), 1e-12)


def _segments(rng: np.random.Generator, n: int, low: float, high: float, sample_rate: int) -> np.ndarray:
    """Start samples of consecutive segments with random lengths in [low, high] seconds (first at 0)."""
    starts = [0]
    while True:
        nxt = starts[-1] + int(rng.uniform(low, high) * sample_rate)
        if nxt >= n:
            return np.array(starts)
        starts.append(nxt)


def _note_envelope(n: int, starts: np.ndarray, attack: int, release: int) -> np.ndarray:
    """Per-note linear attack/release ramps, each note lasting until the next one starts."""
    stops = np.append(starts[1:], n)
    env = np.zeros(n)
    for start, stop in zip(starts, stops, strict=True):
        t = np.arange(stop - start)
        env[start:stop] = np.minimum(1.0, np.minimum((t + 1) / attack, (stop - start - t) / release))
    return env


def harmonic_tone(rng: np.random.Generator, sample_rate: int, n: int) -> np.ndarray:
    """Sustained notes of a harmonic tone with decaying partials and vibrato (an organ / bowed sound)."""
    base = np.exp(rng.uniform(np.log(110.0), np.log(330.0)))
    starts = _segments(rng, n, 0.25, 0.8, sample_rate)
    notes = base * 2.0 ** (rng.choice(PENTATONIC, size=len(starts)) / 12)
    f0 = np.repeat(notes, np.diff(np.append(starts, n)))
    t = np.arange(n) / sample_rate
    rate, depth = rng.uniform(4.0, 7.0), rng.uniform(0.003, 0.015)
    f0 = f0 * (1 + depth * np.sin(2 * np.pi * rate * t + rng.uniform(0, 2 * np.pi)))
    phase = 2 * np.pi * np.cumsum(f0) / sample_rate
    slope = rng.uniform(0.5, 1.5)
    out = np.zeros(n)
    for k in range(1, rng.integers(6, 21) + 1):
        if k * notes.max() * (1 + depth) >= 0.45 * sample_rate:
            break
        out += k**-slope * rng.uniform(0.5, 1.0) * np.sin(k * phase + rng.uniform(0, 2 * np.pi))
    attack, release = int(0.03 * sample_rate), int(0.06 * sample_rate)
    return _unit_rms(out * _note_envelope(n, starts, attack, release))


def _karplus_strong(burst: np.ndarray, decay: float, n: int) -> np.ndarray:
    """A plucked string: ``y[t] = x[t] + decay * (y[t - P] + y[t - P - 1]) / 2``, period P = len(burst).

    Computed one period at a time: a block of P samples only depends on the block before it.
    """
    period = len(burst)
    y = np.zeros(n + period + 1)
    offset = period + 1
    head = min(period, n)
    y[offset : offset + head] = burst[:head]
    for start in range(offset, offset + n, period):
        stop = min(start + period, offset + n)
        y[start:stop] += decay * 0.5 * (y[start - period : stop - period] + y[start - period - 1 : stop - period - 1])
    return y[offset:]


def plucked_string(rng: np.random.Generator, sample_rate: int, n: int) -> np.ndarray:
    """Repeated Karplus-Strong plucks on a melody (a guitar / harp-like sound)."""
    base = np.exp(rng.uniform(np.log(110.0), np.log(330.0)))
    decay = rng.uniform(0.990, 0.998)
    brightness = rng.uniform(0.2, 0.9)
    out = np.zeros(n)
    for start in _segments(rng, n, 0.15, 0.5, sample_rate):
        freq = base * 2.0 ** (rng.choice(PENTATONIC) / 12)
        burst = rng.uniform(-1, 1, size=max(2, int(round(sample_rate / freq - 0.5))))
        burst = lfilter([brightness], [1, brightness - 1], burst)
        out[start:] += rng.uniform(0.6, 1.0) * _karplus_strong(burst, decay, n - start)
    return _unit_rms(out)


def percussive_noise(rng: np.random.Generator, sample_rate: int, n: int) -> np.ndarray:
    """A rhythm of decaying band-passed noise bursts from two or three drum voices."""
    step = int(rng.uniform(0.1, 0.25) * sample_rate)
    grid = np.arange(0, n, step)
    out = np.zeros(n)
    for voice in range(rng.integers(2, 4)):
        hits = grid[rng.random(len(grid)) < 0.45]
        if voice == 0 or len(hits) == 0:
            hits = np.union1d(hits, grid[::4])
        centre = np.exp(rng.uniform(np.log(80.0), np.log(0.3 * sample_rate)))
        width = rng.uniform(0.3, 1.2)
        band = np.clip([centre * 2**-width, centre * 2**width], 20.0, 0.45 * sample_rate)
        tau = rng.uniform(0.01, 0.12) * sample_rate
        length = min(n, int(5 * tau))
        shape = np.exp(-np.arange(length) / tau)
        excitation = np.zeros(n)
        for hit in hits:
            stop = min(n, hit + length)
            excitation[hit:stop] += rng.uniform(0.5, 1.0) * shape[: stop - hit] * rng.standard_normal(stop - hit)
        sos = butter(2, band, btype="bandpass", fs=sample_rate, output="sos")
        out += _unit_rms(sosfilt(sos, excitation)) * rng.uniform(0.5, 1.0)
    return _unit_rms(out)


def _resonator(x: np.ndarray, freq: float, bandwidth: float, sample_rate: int) -> np.ndarray:
    """Two-pole resonance at ``freq`` Hz with unit gain at DC."""
    r = np.exp(-np.pi * bandwidth / sample_rate)
    a = [1.0, -2 * r * np.cos(2 * np.pi * freq / sample_rate), r * r]
    return lfilter([sum(a)], a, x)


def formant_voice(rng: np.random.Generator, sample_rate: int, n: int) -> np.ndarray:
    """A glottal pulse train through cascaded formant resonators, vowels changing syllable by syllable."""
    t = np.arange(n) / sample_rate
    f0 = np.exp(rng.uniform(np.log(90.0), np.log(240.0)))
    contour = f0 * (1 + 0.12 * np.sin(2 * np.pi * rng.uniform(0.3, 1.0) * t + rng.uniform(0, 2 * np.pi)))
    contour *= 1 + 0.01 * rng.standard_normal(n).cumsum() / np.sqrt(sample_rate)
    cycles = np.cumsum(contour) / sample_rate
    pulses = np.diff(np.floor(cycles), prepend=0.0)
    # Glottal spectrum falls by 12 dB/octave (double pole), lip radiation adds 6 dB/octave (difference).
    glottal = np.diff(lfilter([1.0], [1.0, -1.94, 0.9409], pulses), prepend=0.0)
    glottal += 0.02 * rng.standard_normal(n) * np.std(glottal)
    starts = _segments(rng, n, 0.15, 0.4, sample_rate)
    vowel_of = rng.integers(0, len(VOWELS), size=len(starts))
    speaker = rng.uniform(0.9, 1.25)
    fade = max(1, min(n, int(0.03 * sample_rate)))
    smooth = np.ones(fade) / fade
    out = np.zeros(n)
    for vowel in np.unique(vowel_of):
        sound = glottal
        for freq, bandwidth in zip(VOWELS[vowel] * speaker, FORMANT_BANDWIDTHS, strict=True):
            sound = _resonator(sound, min(freq, 0.45 * sample_rate), bandwidth, sample_rate)
        weight = np.repeat((vowel_of == vowel).astype(float), np.diff(np.append(starts, n)))
        out += np.convolve(weight, smooth, mode="same") * _unit_rms(sound)
    syllables = _note_envelope(n, starts, int(0.04 * sample_rate), int(0.08 * sample_rate))
    return _unit_rms(out * syllables)


GENERATORS: dict[str, SignalFn] = {
    "harmonic": harmonic_tone,
    "plucked": plucked_string,
    "percussive": percussive_noise,
    "voice": formant_voice,
}


def source_signal(kind: str, rng: np.random.Generator, sample_rate: int, n: int) -> np.ndarray:
    """A unit-RMS signal of class ``kind`` (one of :data:`GENERATORS`)."""
    return GENERATORS[kind](rng, sample_rate, n)
