"""Circuit maths on plain numpy arrays: factored matrices and streamed selection. No checkpoints, no tokens."""
