"""Pin the CPU code paths of the numeric libraries so that data stages give the same bytes on any
x86-64 CPU with AVX2 (Haswell and later, AMD Zen).

Imported first by the stages that write data (synthesize, featurize), before numpy and torch load:
OpenBLAS, numpy's SIMD dispatch, MKL and PyTorch otherwise each pick kernels by CPU, and a
Sapphire Rapids with AVX-512 then writes echo WAVs, scene tables and mel/STFT shards that differ in
the last bits from an AVX2 machine's (measured: 1000 of 2724 default-pipeline files). Each pin is
a default: a variable already set in the environment wins. About 10 % slower synthesis.
"""

import os

PINS = {
    "OPENBLAS_CORETYPE": "Haswell",  # OpenBLAS kernels (complex matrix products of the head model)
    "NPY_DISABLE_CPU_FEATURES": "X86_V4 AVX512_ICL AVX512_SPR",  # numpy 2.x AVX-512 loops (exp, log1p, ...)
    "MKL_CBWR": "AVX2",  # MKL conditional numerical reproducibility (torch's FFT and matrix products)
    "ATEN_CPU_CAPABILITY": "avx2",  # PyTorch's own vectorised kernels
}

for name, value in PINS.items():
    os.environ.setdefault(name, value)
