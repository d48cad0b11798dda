"""The names a user could send to reach outside a store: every field that names a file,
artifact, dataset or model is tried with each (issue 11's path matrix)."""

BAD_NAMES = [
    "../x",
    "..\\x",
    "%2e%2e%2f",
    "%252e%252e%252f",
    "/etc/passwd",
    "file:///etc/passwd",
    "C:\\x",
    "x\n",  # `$` in a pattern matches before a final newline: names must fullmatch
    "x/../../y",
]
