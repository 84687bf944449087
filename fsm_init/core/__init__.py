"""PID 1's own machinery: the state table, the one event loop, the one System
boundary, the log, the kill library, settings and trust, the journal, status and the
control socket, and the thin reaper.

Import rule: the core imports no other part of fsm_init (config, steps, network,
compat, client), and only the standard library, except prctl (System, setuser) and
netifaces (System), imported where they are used.  Never rich, never transitions.  The
thin reaper, setuser and srvctl load these modules: keep them standard library only,
and keep this __init__ free of imports (the thin reaper and
``python -m fsm_init.core.setuser`` load it first).
"""
