"""``python -m messagehub.engine CAMPAIGN_ID``: run one campaign in this process."""

import sys

from messagehub.engine.process import main

sys.exit(main())
