import sys

from appliance.sim.runner import main

if __name__ == "__main__":
    sys.exit(main())
