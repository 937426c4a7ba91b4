"""Feature cache: zarr or HDF5 arrays behind one reader/writer interface, with a manifest.

``CacheWriter`` streams arrays into a cache and commits it atomically; ``open_cache`` opens a
complete cache (checking expected manifest values); ``verify_cache`` re-hashes every array.
"""

from ltpipe.cache.store import (
    CACHE_FORMAT_VERSION,
    CacheError,
    CacheReader,
    CacheWriter,
    open_cache,
)
from ltpipe.cache.verify import verify_cache

__all__ = ["CACHE_FORMAT_VERSION", "CacheError", "CacheReader", "CacheWriter", "open_cache",
           "verify_cache"]
