"""validate: the Great Expectations suites and their verdict (expectations), per-file facts of the
window (window_facts), the rejection ledger (rejections) and the report (report)."""
