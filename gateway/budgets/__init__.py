"""Budget stores: atomic reserve / settle / release against every budget that applies."""

from gateway.budgets.base import BudgetExceeded, BudgetState, BudgetStore, Window
from gateway.budgets.memory import MemoryBudgetStore
from gateway.budgets.redis_store import RedisBudgetStore

__all__ = [
    "BudgetExceeded",
    "BudgetState",
    "BudgetStore",
    "MemoryBudgetStore",
    "RedisBudgetStore",
    "Window",
]
