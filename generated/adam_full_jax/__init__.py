"""adamgen artifact adam_full_jax: `from adam_full_jax import optimizer` loads it."""
from pathlib import Path as _Path

import adamgen as _adamgen

optimizer = _adamgen.load(_Path(__file__).parent)
