"""fsm-init: a container init whose lifecycle is one transitions state machine.

This package's __init__ stays empty of imports on purpose: the thin reaper
(``fsm_init.core.reaper``) and ``srvctl`` import submodules of it and must stay light.
"""

__version__ = "0.1.0"
