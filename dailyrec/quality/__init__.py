"""Data quality: validation of the day and the window (validation/) and the noise filter
(filtering/), with their settings (settings)."""
