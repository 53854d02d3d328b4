"""Beside the layers: starting processes. `workers` runs jobs in child processes (fold
workers, inference workers); `distributed` knows the ranks of a launcher (torchrun, accelerate).
Any layer may use these; they import only `discourse_rl.core`."""
