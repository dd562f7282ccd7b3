"""Reconcilers: LLMService, FineTuneJob and PowerBudget into pods, services and status.

Planning modules (`gangs`, `engines`, `llmservice`, `finetune`, `powerbudget`, `conditions`, `validation`)
are pure: they read typed snapshots and return plans. Only `kube`, `drain` and `handlers` do I/O.
"""
