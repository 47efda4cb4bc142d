"""Orchestration only: Definitions, jobs, schedules and the shopseq command line."""
