"""The kill library's old name: ``fsm_init.kill`` (kept so that ``from fsm_init.stop import ...`` works)."""

from fsm_init.kill import KILL_SETTLE, POLL, Group, Stopper, leftovers  # noqa: F401  (re-exported)
