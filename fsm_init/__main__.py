import sys

from fsm_init.cli import main

sys.exit(main())
