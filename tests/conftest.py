"""The tests run with the allocator setting the `mmfm` command uses (see mmfm.runtime)."""

from mmfm.runtime import tune_malloc

tune_malloc()
