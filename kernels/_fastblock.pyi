"""kernels/_fastblock.pyx exposes only C-level functions (cimported by _fast)."""
