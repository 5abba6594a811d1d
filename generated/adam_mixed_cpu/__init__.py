"""adamgen artifact adam_mixed_cpu: `from adam_mixed_cpu import optimizer` loads it."""
from pathlib import Path as _Path

import adamgen as _adamgen

optimizer = _adamgen.load(_Path(__file__).parent)
