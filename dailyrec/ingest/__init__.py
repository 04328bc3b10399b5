"""Ingestion: source tables read into canonical events (source, normalise, streams) and the rolling,
day-partitioned history they are merged into (history). fetch_delta and merge_history."""
