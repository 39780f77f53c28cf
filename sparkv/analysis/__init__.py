"""Analysis: reads saved Results; validation, sweeps, tuning, plots and reports."""
