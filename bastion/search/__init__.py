"""Search across recorded sessions: commands and output text extracted, sealed per session, matched in memory."""

# Search bounds, here so that `bastion search`'s parser can name them without importing the index.
MAX_LIMIT = 500              # hits one search returns at most
MAX_SESSIONS_SCANNED = 2000  # newest sessions passing the filters that one search reads
