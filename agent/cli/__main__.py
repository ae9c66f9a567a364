import sys

from agent.cli.ciliate import main

sys.exit(main())
