"""Environments: which spaces an agent takes (:mod:`.spaces`), env ids and their wrappers
(:mod:`.factories`), the vector env rollouts step (:mod:`.vector_env`) and the running
normalizers of observations and rewards (:mod:`.normalization`)."""
