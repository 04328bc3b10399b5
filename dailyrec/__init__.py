"""dailyrec: the library behind the daily recommender pipeline.

Everything shared lives here, split by concern; `stages/` holds only the thin DVC stage entry points
and `serving/` the Flask app. This file imports nothing, so `import dailyrec.x` stays cheap.

    schema       the canonical event schema (the contract between stages)
    settings     params.yaml: one checker per section, every default in params.yaml only
    env          endpoints and secrets from the environment
    paths        where each pipeline file lives
    errors       error kinds and their exit codes
    files        atomic writes, file and DVC hashes
    source       reading source tables into canonical events (fetch_delta)
    history      the day-partitioned history: layout, merge, window selection
    quality      validation suites, the rejection ledger, the noise rules
    model        confidence, ALS fit, artifacts, the recommender interface, ranking, evaluation
    store        the Redis version protocol: key layout, writer (publish) and reader (the API)
    metrics      the shape of every metrics file, for its writer and its readers
    pipeline     dvc.yaml, read in one place; dvc status
    tracking     MLflow runs and the model registry
    notify       alert and report mail
    report       the business owner's daily report
    runner       the daily run (`python -m stages.daily`)
"""
