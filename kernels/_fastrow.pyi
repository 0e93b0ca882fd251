"""kernels/_fastrow.pyx exposes only C-level functions (cimported by _fast)."""
