"""Where a stage's per-pair work runs: in this process (``local``) or on a Ray cluster (``ray``)."""
