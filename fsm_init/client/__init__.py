"""The tools that talk to a running fsm-init and are never PID 1: srvctl, the status
view (``fsm-init status``) and the diagrams (``fsm-init graph``).

Import rule: the client imports the core only (the control socket's client, the
journal, settings, the table), never the engine or a step.  The client is the only
part that may use rich (the status view); srvctl stays standard library only.
"""
