"""Pure planners: desired state of LLMServices, FineTuneJobs and PowerBudgets from typed snapshots.

No Kubernetes, network or wall-clock access; time arrives as an argument. The shells (`controllers.shells`)
fetch, translate, call a planner and apply what it returns.
"""
