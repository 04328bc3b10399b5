"""Operations: the daily run (runner), its report and mail (report, notify), MLflow (tracking,
datasets) and dvc.yaml read in one place (pipeline)."""
