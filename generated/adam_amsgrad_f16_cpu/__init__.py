"""adamgen artifact adam_amsgrad_f16_cpu: `from adam_amsgrad_f16_cpu import optimizer` loads it."""
from pathlib import Path as _Path

import adamgen as _adamgen

optimizer = _adamgen.load(_Path(__file__).parent)
