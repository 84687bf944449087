"""The lifecycle steps' work, one module per step (its name is the state's, see
core/table.py), the supervised service (restart policy, health) and the script
runners (foreground scripts, status-check mode's checks).

Import rule: steps import the core and config; never network, compat or client.
"""
