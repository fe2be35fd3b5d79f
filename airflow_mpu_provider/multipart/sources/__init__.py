"""Sources: where the bytes come from.

``file`` (a file pinned by its fingerprint), ``file_range`` (a file's part read as the socket asks),
``stream`` (any readable or iterable of bytes as a stream of parts) and ``command`` (a shell command's
output, with its exit status and stderr).
"""
