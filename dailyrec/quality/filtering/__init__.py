"""filter_noise: the noise rules (rules), what an IP text is (ip_texts), each day's verdicts kept
by content (day_verdicts), the same rules on Spark (spark_engine), and data/clean's layout (clean),
which train reads."""
