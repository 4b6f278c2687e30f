"""The real DAGs, the CPU rehearsal, SLURM and the browser (minutes each)."""
