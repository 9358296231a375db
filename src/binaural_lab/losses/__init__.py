"""Training losses, one module per family; a family's registry pairs each model with its loss.

A loss is built for a run of ``epochs`` epochs and exposes ``weights(epoch)``: the weight of each
term in force, keyed by the params key that sets it (see :mod:`binaural_lab.losses.depth`).
"""
