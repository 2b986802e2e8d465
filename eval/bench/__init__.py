"""MACRO-Bench: tasks with checkers, the agents compared, the runner and the report."""
