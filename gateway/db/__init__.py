"""Relational state: teams, keys, budgets, rate limits and the ledger (SQLAlchemy 2)."""
