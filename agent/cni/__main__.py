import sys

from agent.cni.plugin import main

sys.exit(main())
