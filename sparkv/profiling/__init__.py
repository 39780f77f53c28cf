"""Measuring this machine (compute, link, disk) into device profiles; the fitted models live in `cost_models`."""
