"""Reconcilers for LLMService, FineTuneJob and PowerBudget, in two visibly separate halves.

`controllers.planners` is pure (snapshot in, plan out); `controllers.shells` is the kopf side that does the I/O
through `adapters`. The import-linter contracts in `.importlinter` hold the split.
"""
