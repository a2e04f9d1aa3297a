import sys

from appliance.sim.runner import main

sys.exit(main())
