"""The core every package stands on, importing nothing above it: error kinds and exit statuses
(errors, cli), the environment (env), where each file lives (paths), atomic writes and hashes
(files), the settings accessor (settings), the canonical event schema and the shape of every
metrics file (schema, metrics: the contract between stages), and small shared tools (arrays,
privacy, render, spark)."""
