"""Data quality: the validation suites (expectations), the rejection ledger (rejections), the
noise rules (rules), and the validation report (validation_report)."""
