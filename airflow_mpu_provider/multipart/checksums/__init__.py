"""Checksums: what proves that bytes in S3 are the file's bytes.

``digests`` (a part's checksums and MD5, algorithm names, which ETags are MD5s), ``whole_file`` (the
checksum type, COMPOSITE or FULL_OBJECT, and the whole file's CRC combined from its parts), ``compare``
(is the object at a key this file: SHA or MD5 first, a CRC only where nothing stronger exists) and
``verify`` (the pure verdict on what Complete and HeadObject answered).
"""
