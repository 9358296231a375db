"""Networks of the project, one file each, each with its config dataclass at the top.

A family's registry (``binaural_lab.depth.REGISTRY``, ...) maps model names to these networks and
their losses; nothing here is family-specific. Every depth model takes echo spectrograms
``[B, 2, S, S]`` (left, right) and returns a dict whose ``"depth"`` is ``[B, 1, S, S]`` in metres in
``[0, max_depth]``.
"""
