"""The tests run with the allocator setting the `mmfm` command uses (see mmfm.runtime), and keep the
precision measurements of `--precision auto` in a folder of their own (not the user's ~/.cache)."""

import os
import tempfile

from mmfm.runtime import tune_malloc

os.environ.setdefault("MMFM_CACHE_DIR", tempfile.mkdtemp(prefix="mmfm-test-cache-"))

tune_malloc()
