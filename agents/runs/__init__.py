"""A run on disk: the run directory's layout (:mod:`.layout`), the checkpoint file format
(:mod:`.checkpoint`) and what an agent stores in it (:mod:`.agent_state`), rebuilding an agent
from it (:mod:`.loading`), the run's identity and lock (:mod:`.run_dir`), progress rows
(:mod:`.progress`), plots (:mod:`.plotting`) and evaluation (:mod:`.evaluation`)."""
