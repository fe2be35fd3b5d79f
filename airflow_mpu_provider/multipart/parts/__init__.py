"""Parts: how a file is cut and what S3 keeps of each piece.

``plan`` (part sizes and ranges under S3's rules), ``record`` (a stored part: number, ETag, checksums)
and ``body`` (a part's request body, metered and stopped on cancel).
"""
