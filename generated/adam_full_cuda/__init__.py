"""adamgen artifact adam_full_cuda: `from adam_full_cuda import optimizer` loads it."""
from pathlib import Path as _Path

import adamgen as _adamgen

optimizer = _adamgen.load(_Path(__file__).parent)
