"""dailyrec: the library behind the daily recommender pipeline, one package per step over a core.

    core      errors, env, paths, files, settings, the event schema and metrics shapes (imports
              nothing above it)
    ingest    source tables -> canonical events -> the day-partitioned history
    quality   validation (the day, the window, the rejection ledger) and the noise filter
    model     confidence, fitting, the recommender interface, ranking, evaluation and the gate
    publish   the Redis version protocol: writer (publish) and reader (the API)
    ops       the daily runner, its report and mail, MLflow tracking, dvc.yaml

`stages/` holds only the thin DVC stage entry points and `serving/` the API. This file imports
nothing, so `import dailyrec.x` stays cheap.
"""
