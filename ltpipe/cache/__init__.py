"""Feature cache: zarr or HDF5 arrays behind one reader/writer interface, with a manifest.

``CacheWriter`` (store.py) streams arrays into a cache and commits it atomically; ``open_cache``
(reader.py) opens a complete cache (checking expected manifest values); ``verify_cache``
(verify.py) re-checks every chunk's checksum and names the chunks that differ. format.py holds
what they share (errors, checksums, the backend table), rawio.py the backends' raw file reads.
"""

from ltpipe.cache.format import CACHE_FORMAT_VERSION, CacheError
from ltpipe.cache.reader import CacheReader, open_cache
from ltpipe.cache.store import CacheWriter
from ltpipe.cache.verify import verify_cache

__all__ = ["CACHE_FORMAT_VERSION", "CacheError", "CacheReader", "CacheWriter", "open_cache",
           "verify_cache"]
