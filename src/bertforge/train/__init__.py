"""Training: the run config, Composer wiring, schedules in tokens, monitoring callbacks and export."""
